// A tiny marketplace for the browser test: it rejects a product without a `name` with 422,
// knows category 1 from the start and learns others from POST /categories.
// Prints `listening PORT` once it accepts connections; GET /received lists the accepted products.
import http from 'node:http';

const categories = new Set([1]);
const products = [];

const send = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
};

const server = http.createServer((req, res) => {
  let raw = '';
  req.on('data', (chunk) => { raw += chunk; });
  req.on('end', () => {
    let body = null;
    try { body = raw ? JSON.parse(raw) : null; } catch { return send(res, 400, { error: 'body is not JSON' }); }
    const url = new URL(req.url, 'http://target');
    const cat = /^\/categories\/(\d+)$/.exec(url.pathname);
    if (req.method === 'GET' && cat) {
      return categories.has(Number(cat[1])) ? send(res, 200, { id: Number(cat[1]) }) : send(res, 404, { error: 'no such category' });
    }
    if (req.method === 'POST' && url.pathname === '/categories') {
      categories.add(Number(body && body.id));
      return send(res, 201, { id: body && body.id });
    }
    if (req.method === 'POST' && url.pathname === '/products') {
      if (!body || typeof body.name !== 'string' || !body.name.trim()) {
        return send(res, 422, { error: 'validation failed: name is required', field: 'name' });
      }
      if (!categories.has(Number(body.category_id))) {
        return send(res, 422, { error: 'missing_category' });
      }
      products.push(body);
      return send(res, 201, { ...body, created: true });
    }
    if (req.method === 'GET' && url.pathname === '/received') return send(res, 200, products);
    return send(res, 404, { error: 'not found' });
  });
});

server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
