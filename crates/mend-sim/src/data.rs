//! The catalog both simulators serve, and the least work a sync of it can cost.
//!
//! Key types: [`DataConfig`] says how big a catalog to generate and from which seed;
//! [`Dataset`] holds the categories (a forest), the products, and the set of categories the
//! target marketplace lacks at start; [`LowerBound`] counts the target requests any correct
//! run must send, computed from the data alone so a run's report can be compared with it.

use std::collections::{BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::SimError;

/// Chance that a generated category (other than the first) gets a parent.
const PARENT_SHARE: f64 = 0.7;
/// Deepest level a generated category may sit at (roots are level 1).
const MAX_DEPTH: u8 = 4;

const ADJECTIVES: &[&str] = &[
    "Classic", "Smart", "Eco", "Compact", "Deluxe", "Vintage", "Urban", "Pro", "Mini", "Solar",
    "Nordic", "Travel",
];
const CATEGORY_NOUNS: &[&str] = &[
    "Garden", "Kitchen", "Audio", "Outdoor", "Office", "Toys", "Lighting", "Bath", "Sports",
    "Books", "Tools", "Pets",
];
const PRODUCT_NOUNS: &[&str] = &[
    "Lamp",
    "Kettle",
    "Speaker",
    "Chair",
    "Backpack",
    "Mug",
    "Drill",
    "Blanket",
    "Headphones",
    "Planter",
    "Tent",
    "Notebook",
];

/// How to generate a [`Dataset`]: sizes, the share of categories the target lacks, and the
/// seed that makes it reproducible.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Number of products, with ids `1..=products`.
    pub products: usize,
    /// Number of categories, with ids `1..=categories`. Must be at least 1 when there are
    /// products.
    pub categories: usize,
    /// Share (0.0 to 1.0) of categories the target lacks at start: exactly
    /// `round(missing_share * categories)` of them, as a set closed downward (see
    /// [`Dataset::generate`]).
    pub missing_share: f64,
    /// Seed for every random choice; the same config always gives the same dataset.
    pub seed: u64,
}

impl Default for DataConfig {
    /// 1000 products in 50 categories, 30% of the categories missing, seed 42.
    fn default() -> Self {
        Self {
            products: 1000,
            categories: 50,
            missing_share: 0.3,
            seed: 42,
        }
    }
}

/// A category of the source shop. Roots have no parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Category {
    /// Unique id, the same in source and target.
    pub id: u64,
    /// Display name (not unique).
    pub name: String,
    /// The parent category, `null` in JSON for a root.
    pub parent_id: Option<u64>,
}

/// A product of the source shop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Unique id, the same in source and target.
    pub id: u64,
    /// Display name (not unique).
    pub name: String,
    /// Price in the shop's currency, with at most two decimals.
    pub price: f64,
    /// Stock keeping unit, unique (`SKU-000042` for product 42 in generated data).
    pub sku: String,
    /// The category the product belongs to; the target rejects the product until it has it.
    pub category_id: u64,
}

/// The least number of target requests a run that syncs every product must send.
///
/// See [`Dataset::lower_bound`] (a design that checks before it writes) and
/// [`Dataset::optimistic_lower_bound`] (a design that writes first) for how each field is
/// counted. Requests to the source shop are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LowerBound {
    /// Facts about categories the run must learn from the target, one request each.
    pub checks: u64,
    /// Categories the run must create in the target.
    pub category_creates: u64,
    /// Products the run must create in the target.
    pub product_creates: u64,
    /// `checks + category_creates + product_creates`.
    pub total: u64,
}

impl LowerBound {
    fn new(checks: usize, category_creates: usize, product_creates: usize) -> Self {
        let (checks, category_creates, product_creates) = (
            checks as u64,
            category_creates as u64,
            product_creates as u64,
        );
        Self {
            checks,
            category_creates,
            product_creates,
            total: checks + category_creates + product_creates,
        }
    }
}

/// The reference scenario's data: what the source shop serves and what the target lacks.
///
/// Categories and products are sorted by id. The target marketplace starts with every
/// category that is not [missing](Dataset::missing) and no product.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    categories: Vec<Category>,
    products: Vec<Product>,
    missing: BTreeSet<u64>,
}

impl Dataset {
    /// Generates a dataset from `config`, reproducibly: the same config always gives the
    /// same dataset.
    ///
    /// Category `i` gets a parent with a 70% chance, chosen uniformly among `1..i` (so the
    /// categories form a forest); when that parent already sits at level 4, its ancestor at
    /// level 3 is taken instead, so no tree is deeper than 4 levels. As in most shops, a
    /// product sits in a leaf category, chosen uniformly among the leaves; inner categories
    /// are needed only as ancestors.
    ///
    /// The missing set has exactly `round(missing_share * categories)` categories and is
    /// closed downward: categories are visited in random order, and each one not yet
    /// missing is taken with its whole subtree when that still fits in the count. (Picking
    /// that many at random and then closing the set would overshoot: one missing root takes
    /// its whole tree along.)
    ///
    /// Categories, products and the missing set draw from separate random streams, so
    /// changing `products` keeps the same categories and missing set.
    pub fn generate(config: &DataConfig) -> Result<Self, SimError> {
        if !(0.0..=1.0).contains(&config.missing_share) {
            return Err(SimError::InvalidData(format!(
                "missing_share is {}, expected a share between 0.0 and 1.0",
                config.missing_share
            )));
        }
        if config.categories == 0 && config.products > 0 {
            return Err(SimError::InvalidData(format!(
                "{} products need at least one category, got categories: 0",
                config.products
            )));
        }

        // Index 0 is unused so that ids index the vectors directly.
        let mut rng = stream(config.seed, 1);
        let mut parents: Vec<Option<usize>> = vec![None; config.categories + 1];
        let mut depth: Vec<u8> = vec![0; config.categories + 1];
        let mut categories = Vec::with_capacity(config.categories);
        for id in 1..=config.categories {
            let parent = if id > 1 && rng.random_bool(PARENT_SHARE) {
                let mut p = rng.random_range(1..id);
                while depth[p] >= MAX_DEPTH {
                    match parents[p] {
                        Some(up) => p = up,
                        None => break,
                    }
                }
                Some(p)
            } else {
                None
            };
            parents[id] = parent;
            depth[id] = parent.map_or(1, |p| depth[p] + 1);
            categories.push(Category {
                id: id as u64,
                name: format!(
                    "{} {}",
                    pick(&mut rng, ADJECTIVES),
                    pick(&mut rng, CATEGORY_NOUNS)
                ),
                parent_id: parent.map(|p| p as u64),
            });
        }

        let mut children: Vec<Vec<usize>> = vec![Vec::new(); config.categories + 1];
        for (id, parent) in parents.iter().enumerate() {
            if let Some(p) = parent {
                children[*p].push(id);
            }
        }
        let leaves: Vec<u64> = (1..=config.categories)
            .filter(|id| children[*id].is_empty())
            .map(|id| id as u64)
            .collect();

        let mut rng = stream(config.seed, 2);
        let products = (1..=config.products as u64)
            .map(|id| Product {
                id,
                name: format!(
                    "{} {}",
                    pick(&mut rng, ADJECTIVES),
                    pick(&mut rng, PRODUCT_NOUNS)
                ),
                price: f64::from(rng.random_range(199_u32..=49_999)) / 100.0,
                sku: format!("SKU-{id:06}"),
                category_id: leaves[rng.random_range(0..leaves.len())],
            })
            .collect();

        let mut rng = stream(config.seed, 3);
        let wanted = ((config.missing_share * config.categories as f64).round() as usize)
            .min(config.categories);
        let mut order: Vec<usize> = (1..=config.categories).collect();
        order.shuffle(&mut rng);
        let mut missing = vec![false; config.categories + 1];
        let mut count = 0;
        for id in order {
            if count == wanted {
                break;
            }
            // The set stays closed downward, so a category not missing yet has no missing
            // ancestor, but it may have missing descendants.
            if missing[id] {
                continue;
            }
            let mut subtree = vec![id];
            let mut stack = vec![id];
            while let Some(at) = stack.pop() {
                for &child in &children[at] {
                    if !missing[child] {
                        subtree.push(child);
                        stack.push(child);
                    }
                }
            }
            if count + subtree.len() <= wanted {
                count += subtree.len();
                for at in subtree {
                    missing[at] = true;
                }
            }
        }
        let seeds = (1..=config.categories)
            .filter(|id| missing[*id])
            .map(|id| id as u64);

        Self::new(categories, products, seeds)
    }

    /// Builds a dataset by hand (tests, demos with a fixed shape).
    ///
    /// `missing` lists categories the target lacks; the set is closed downward (see
    /// [`Dataset::missing`]). Fails when ids repeat, a parent or a product's category is not
    /// among `categories`, the parents form a cycle, or `missing` names an unknown category.
    pub fn new(
        mut categories: Vec<Category>,
        mut products: Vec<Product>,
        missing: impl IntoIterator<Item = u64>,
    ) -> Result<Self, SimError> {
        categories.sort_by_key(|c| c.id);
        products.sort_by_key(|p| p.id);
        if let Some(w) = categories.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SimError::InvalidData(format!(
                "category id {} appears twice",
                w[0].id
            )));
        }
        if let Some(w) = products.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(SimError::InvalidData(format!(
                "product id {} appears twice",
                w[0].id
            )));
        }
        let parent_of: HashMap<u64, Option<u64>> =
            categories.iter().map(|c| (c.id, c.parent_id)).collect();
        for c in &categories {
            if let Some(p) = c.parent_id
                && !parent_of.contains_key(&p)
            {
                return Err(SimError::InvalidData(format!(
                    "category {} has parent {p}, which is not a category",
                    c.id
                )));
            }
            // A walk up that takes more steps than there are categories is going round.
            let mut up = c.parent_id;
            let mut steps = 0;
            while let Some(p) = up {
                steps += 1;
                if steps > categories.len() {
                    return Err(SimError::InvalidData(format!(
                        "category {} is its own ancestor",
                        c.id
                    )));
                }
                up = parent_of.get(&p).copied().flatten();
            }
        }
        if let Some(p) = products
            .iter()
            .find(|p| !parent_of.contains_key(&p.category_id))
        {
            return Err(SimError::InvalidData(format!(
                "product {} has category {}, which is not a category",
                p.id, p.category_id
            )));
        }
        let seeds: BTreeSet<u64> = missing.into_iter().collect();
        if let Some(id) = seeds.iter().find(|id| !parent_of.contains_key(id)) {
            return Err(SimError::InvalidData(format!(
                "missing category {id} is not a category"
            )));
        }

        // Downward closure: a category is missing when it or any ancestor was picked.
        let missing = categories
            .iter()
            .filter(|c| {
                let mut at = Some(c.id);
                while let Some(id) = at {
                    if seeds.contains(&id) {
                        return true;
                    }
                    at = parent_of.get(&id).copied().flatten();
                }
                false
            })
            .map(|c| c.id)
            .collect();

        Ok(Self {
            categories,
            products,
            missing,
        })
    }

    /// Every category, sorted by id.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// Every product, sorted by id.
    pub fn products(&self) -> &[Product] {
        &self.products
    }

    /// The category with this id.
    pub fn category(&self, id: u64) -> Option<&Category> {
        self.categories
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.categories[i])
    }

    /// The product with this id.
    pub fn product(&self, id: u64) -> Option<&Product> {
        self.products
            .binary_search_by_key(&id, |p| p.id)
            .ok()
            .map(|i| &self.products[i])
    }

    /// Ids of the categories the target lacks at start.
    ///
    /// The set is closed downward: when a category is missing, so is every descendant,
    /// because the target cannot hold a category whose parent it lacks.
    pub fn missing(&self) -> &BTreeSet<u64> {
        &self.missing
    }

    /// Whether the target lacks this category at start.
    pub fn is_missing(&self, id: u64) -> bool {
        self.missing.contains(&id)
    }

    /// The categories the target holds at start: every category not missing, sorted by id.
    pub fn present_categories(&self) -> impl Iterator<Item = &Category> {
        self.categories
            .iter()
            .filter(|c| !self.missing.contains(&c.id))
    }

    /// Ids of the distinct categories that products belong to.
    pub fn referenced_categories(&self) -> BTreeSet<u64> {
        self.products.iter().map(|p| p.category_id).collect()
    }

    /// Ids of the missing categories a run must create: every missing referenced category
    /// and every missing ancestor of one (walking up from a missing referenced category
    /// until the first ancestor the target holds). Missing categories no product needs are
    /// not in it.
    pub fn missing_needed(&self) -> BTreeSet<u64> {
        let mut needed = BTreeSet::new();
        for id in self.referenced_categories() {
            let mut at = Some(id);
            while let Some(id) = at.filter(|id| self.missing.contains(id)) {
                if !needed.insert(id) {
                    break; // the rest of the chain is already in
                }
                at = self.category(id).and_then(|c| c.parent_id);
            }
        }
        needed
    }

    /// The least number of target requests for a run that checks before it writes and
    /// learns each fact once (a cache, single-flight per category).
    ///
    /// - `checks` = |[`referenced_categories`](Self::referenced_categories) ∪
    ///   [`missing_needed`](Self::missing_needed) ∪ parents of `missing_needed`|: one request
    ///   for every distinct category a product belongs to (does the target have it?), and,
    ///   since a category is created only once its parent is known to exist, one for the
    ///   parent of every missing category the run creates (a missing ancestor, or the first
    ///   ancestor the target holds).
    /// - `category_creates` = |[`missing_needed`](Self::missing_needed)|: one create per
    ///   missing category a product needs, ancestors included.
    /// - `product_creates` = the number of products: the target starts with none.
    /// - `total` = the sum.
    pub fn lower_bound(&self) -> LowerBound {
        let needed = self.missing_needed();
        let mut learn = self.referenced_categories();
        learn.extend(needed.iter().copied());
        learn.extend(
            needed
                .iter()
                .filter_map(|id| self.category(*id).and_then(|c| c.parent_id)),
        );
        let checks = learn.len();
        LowerBound::new(checks, needed.len(), self.products.len())
    }

    /// The least number of target requests for a run that writes first and treats a
    /// rejection as "missing" (optimistic mode), learning each fact once.
    ///
    /// Present categories cost nothing here: the product's create is the check. So
    /// `checks` = |[`missing_needed`](Self::missing_needed)|: one rejected create per
    /// missing category a product needs (a product's `missing_category` rejection, or a
    /// child category's `missing_parent` rejection), and the other fields are those of
    /// [`lower_bound`](Self::lower_bound). This is also the least any design can send.
    pub fn optimistic_lower_bound(&self) -> LowerBound {
        let needed = self.missing_needed().len();
        LowerBound::new(needed, needed, self.products.len())
    }
}

/// An independent random stream per aspect of the dataset, all from one seed.
fn stream(seed: u64, aspect: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ aspect.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    words[rng.random_range(0..words.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category(id: u64, parent_id: Option<u64>) -> Category {
        Category {
            id,
            name: format!("c{id}"),
            parent_id,
        }
    }

    fn product(id: u64, category_id: u64) -> Product {
        Product {
            id,
            name: format!("p{id}"),
            price: 1.5,
            sku: format!("SKU-{id}"),
            category_id,
        }
    }

    /// 1 (present) ─ 2 (missing) ─ 3 (missing, by closure)
    ///             └ 5 (present)
    /// 4 (missing) ─ 6 (missing, by closure, referenced by no product)
    /// 7 (present, root, no products)
    fn tiny() -> Dataset {
        Dataset::new(
            vec![
                category(3, Some(2)),
                category(1, None),
                category(2, Some(1)),
                category(4, None),
                category(5, Some(1)),
                category(6, Some(4)),
                category(7, None),
            ],
            vec![
                product(1, 1),
                product(2, 3),
                product(3, 3),
                product(4, 4),
                product(5, 5),
            ],
            [2, 4],
        )
        .expect("the tiny dataset is consistent")
    }

    #[test]
    fn lower_bound_of_a_hand_checked_dataset() {
        let data = tiny();
        assert_eq!(data.missing(), &BTreeSet::from([2, 3, 4, 6]));
        assert_eq!(data.referenced_categories(), BTreeSet::from([1, 3, 4, 5]));
        assert_eq!(data.missing_needed(), BTreeSet::from([2, 3, 4]));
        // checks: 1, 3, 4, 5 referenced + 2 as the missing parent of 3 (1, the parent of 2,
        // is referenced anyway).
        assert_eq!(
            data.lower_bound(),
            LowerBound {
                checks: 5,
                category_creates: 3,
                product_creates: 5,
                total: 13,
            }
        );
        // Optimistic: one rejection each for 3 (product 2), 2 (category 3) and 4 (product 4).
        assert_eq!(
            data.optimistic_lower_bound(),
            LowerBound {
                checks: 3,
                category_creates: 3,
                product_creates: 5,
                total: 11,
            }
        );
        assert_eq!(
            data.present_categories().map(|c| c.id).collect::<Vec<_>>(),
            [1, 5, 7]
        );
        assert_eq!(data.category(3).and_then(|c| c.parent_id), Some(2));
        assert_eq!(data.product(4).map(|p| p.category_id), Some(4));
        assert!(data.product(9).is_none());
    }

    #[test]
    fn same_seed_same_dataset_other_seed_other_dataset() {
        let config = DataConfig {
            products: 300,
            categories: 40,
            missing_share: 0.25,
            seed: 7,
        };
        let a = Dataset::generate(&config).expect("valid config");
        let b = Dataset::generate(&config).expect("valid config");
        assert_eq!(a, b);
        let c = Dataset::generate(&DataConfig { seed: 8, ..config }).expect("valid config");
        assert_ne!(a, c);
        assert_ne!(a.missing(), c.missing());

        // More products, same seed: the categories and the missing set stay.
        let d = Dataset::generate(&DataConfig {
            products: 500,
            ..config
        })
        .expect("valid config");
        assert_eq!(a.categories(), d.categories());
        assert_eq!(a.missing(), d.missing());
        assert_eq!(a.products(), &d.products()[..300]);
    }

    #[test]
    fn generated_data_has_the_promised_shape() {
        let mut nested = 0;
        for seed in 0..20 {
            let config = DataConfig {
                products: 200,
                categories: 60,
                missing_share: 0.2,
                seed,
            };
            let data = Dataset::generate(&config).expect("valid config");
            assert_eq!(data.categories().len(), 60);
            assert_eq!(data.products().len(), 200);
            let ids: Vec<u64> = data.categories().iter().map(|c| c.id).collect();
            assert_eq!(ids, (1..=60).collect::<Vec<_>>());

            for c in data.categories() {
                // Parents come earlier, and no tree is deeper than MAX_DEPTH levels.
                let mut levels = 1;
                let mut at = c.parent_id;
                while let Some(p) = at {
                    assert!(p < c.id);
                    levels += 1;
                    at = data.category(p).and_then(|c| c.parent_id);
                }
                assert!(levels <= usize::from(MAX_DEPTH), "category {c:?} too deep");

                // Downward closure.
                if let Some(p) = c.parent_id
                    && data.is_missing(p)
                {
                    assert!(data.is_missing(c.id), "child {} of missing {p}", c.id);
                }
            }
            // Exactly the share is missing, and products sit in leaves.
            assert_eq!(data.missing().len(), 12);
            for p in data.products() {
                assert!(
                    data.categories()
                        .iter()
                        .all(|c| c.parent_id != Some(p.category_id)),
                    "product {} is in inner category {}",
                    p.id,
                    p.category_id
                );
            }
            assert!(data.products().iter().all(|p| p.price > 0.0));

            let needed = data.missing_needed();
            assert!(needed.is_subset(data.missing()));
            for id in &needed {
                // Every needed category's missing parent is needed too.
                if let Some(p) = data.category(*id).and_then(|c| c.parent_id)
                    && data.is_missing(p)
                {
                    assert!(needed.contains(&p));
                }
            }
            let bound = data.lower_bound();
            assert_eq!(
                bound.total,
                bound.checks + bound.category_creates + bound.product_creates
            );
            let referenced = data.referenced_categories().len() as u64;
            assert!(bound.checks >= referenced);
            nested += usize::from(bound.checks > referenced);
        }
        assert!(nested > 0, "no seed needs a missing inner category");
    }

    #[test]
    fn bad_configs_and_data_are_refused() {
        let bad_share = DataConfig {
            missing_share: 1.5,
            ..DataConfig::default()
        };
        assert!(
            Dataset::generate(&bad_share)
                .expect_err("share above 1")
                .to_string()
                .contains("missing_share is 1.5")
        );
        let no_categories = DataConfig {
            categories: 0,
            ..DataConfig::default()
        };
        assert!(Dataset::generate(&no_categories).is_err());

        let cycle = Dataset::new(vec![category(1, Some(2)), category(2, Some(1))], vec![], []);
        assert!(
            cycle
                .expect_err("cycle")
                .to_string()
                .contains("its own ancestor")
        );
        let orphan = Dataset::new(vec![category(1, None)], vec![product(1, 9)], []);
        assert!(orphan.is_err());
        let unknown_missing = Dataset::new(vec![category(1, None)], vec![], [3]);
        assert!(unknown_missing.is_err());

        let everything = Dataset::generate(&DataConfig {
            missing_share: 1.0,
            ..DataConfig::default()
        })
        .expect("valid config");
        assert_eq!(everything.missing().len(), everything.categories().len());
    }
}
