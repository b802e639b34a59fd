// Test OpenID Connect provider for Portcullis integration tests.
//
// panva oidc-provider (pinned in package.json) with:
//   - device authorization grant (RFC 8628) enabled,
//   - devInteractions: any login name becomes the subject, any password works,
//   - static RS256 signing key from jwks.json (kid "portcullis-test-1"),
//   - email and groups claims placed in the ID token (conformIdTokenClaims: false).
//
// Environment:
//   PORT         TCP port on 127.0.0.1 to listen on; 0 (default) = any free port.
//   IDTOKEN_TTL  ID token lifetime in seconds (default 3600).
//   DEVICE_CODE_TTL  device code lifetime in seconds (default 300).
//
// Test-only admin routes (never part of a real IdP):
//   POST /admin/rotate          sign with signing-key-2.pem (kid "portcullis-test-2")
//                               from now on; the JWKS then publishes only that key.
//                               The provider is rebuilt; grants, sessions and refresh
//                               tokens survive (oidc-provider's memory adapter is
//                               module-level).
//   POST /admin/disable?sub=X   account X no longer exists: logins and refreshes fail.
//   POST /admin/enable?sub=X    undoes disable.
//   GET  /admin/stats           {"jwks_requests": N, "device_authorizations": M}: how
//                               often the JWKS was fetched and device
//                               authorizations (RFC 8628 §3.1) were asked for.
//
// Once listening, exactly one line is written to stdout:
//   {"issuer":"http://127.0.0.1:PORT"}
// Everything else (including oidc-provider's own notices) goes to stderr.
// The process exits when stdin closes, or on SIGTERM / SIGINT.

import { createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

// oidc-provider prints notices with console.info (stdout). Route every console
// method to stderr so stdout carries only the JSON line.
for (const method of ['log', 'info', 'debug', 'warn', 'error']) {
  // eslint-disable-next-line no-console
  console[method] = (...args) => {
    process.stderr.write(`${args.map(String).join(' ')}\n`);
  };
}

const here = (name) => new URL(name, import.meta.url);
const jwks = JSON.parse(readFileSync(here('./jwks.json'), 'utf8'));
const accounts = JSON.parse(readFileSync(here('./accounts.json'), 'utf8'));

const port = Number.parseInt(process.env.PORT ?? '0', 10);
const idTokenTtl = Number.parseInt(process.env.IDTOKEN_TTL ?? '3600', 10);
const deviceCodeTtl = Number.parseInt(process.env.DEVICE_CODE_TTL ?? '300', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`invalid PORT: ${process.env.PORT}\n`);
  process.exit(2);
}
if (!Number.isInteger(idTokenTtl) || idTokenTtl <= 0) {
  process.stderr.write(`invalid IDTOKEN_TTL: ${process.env.IDTOKEN_TTL}\n`);
  process.exit(2);
}

function shutdown(code) {
  process.exit(code);
}
process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
process.stdin.on('end', () => shutdown(0));
process.stdin.on('close', () => shutdown(0));
process.stdin.on('error', () => shutdown(0));
process.stdin.resume();

const { default: Provider } = await import('oidc-provider');

// Bind first so the issuer can carry the real port.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end('starting');
};
const server = http.createServer((req, res) => handler(req, res));
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const DEVICE_CODE = 'urn:ietf:params:oauth:grant-type:device_code';

const disabled = new Set();
let jwksRequests = 0;
let deviceAuthorizations = 0;

function rotatedJwks() {
  const pem = readFileSync(here('./signing-key-2.pem'), 'utf8');
  const jwk = createPrivateKey(pem).export({ format: 'jwk' });
  return { keys: [{ ...jwk, kid: 'portcullis-test-2', use: 'sig', alg: 'RS256' }] };
}

const makeProvider = (keys) => new Provider(issuer, {
  jwks: keys,
  clients: [
    {
      client_id: 'portcullis',
      client_name: 'Portcullis',
      token_endpoint_auth_method: 'none',
      // The web console (issue 17) logs in with the authorization code
      // flow and PKCE: a native client, so a loopback redirect URI matches
      // on any port (RFC 8252 §7.3); auth_time is always in the ID token.
      application_type: 'native',
      grant_types: [DEVICE_CODE, 'refresh_token', 'authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/auth/callback'],
      require_auth_time: true,
    },
    {
      client_id: 'portcullis-confidential',
      client_name: 'Portcullis (confidential)',
      client_secret: 'portcullis-test-secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: [DEVICE_CODE, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  features: {
    deviceFlow: { enabled: true },
    devInteractions: { enabled: true },
  },
  conformIdTokenClaims: false,
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  ttl: {
    DeviceCode: deviceCodeTtl,
    IdToken: idTokenTtl,
    AccessToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    RefreshToken: 86400,
  },
  async findAccount(_ctx, sub) {
    if (disabled.has(sub)) return undefined;
    const groups = Array.isArray(accounts[sub]) ? accounts[sub] : [];
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.com`,
          email_verified: true,
          groups,
        };
      },
    };
  },
});

function install(provider) {
  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`server_error: ${err?.stack ?? err}\n`);
  });
  const callback = provider.callback();
  handler = (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/jwks') jwksRequests += 1;
    if (url.pathname === '/device/auth' && req.method === 'POST') deviceAuthorizations += 1;
    if (!url.pathname.startsWith('/admin/')) return callback(req, res);
    const reply = (status, body) => {
      res.statusCode = status;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(body));
    };
    const sub = url.searchParams.get('sub');
    if (req.method === 'POST' && url.pathname === '/admin/rotate') {
      install(makeProvider(rotatedJwks()));
      process.stderr.write('signing key rotated to portcullis-test-2\n');
      return reply(200, { kid: 'portcullis-test-2' });
    }
    if (req.method === 'POST' && url.pathname === '/admin/disable' && sub) {
      disabled.add(sub);
      return reply(200, { disabled: sub });
    }
    if (req.method === 'POST' && url.pathname === '/admin/enable' && sub) {
      disabled.delete(sub);
      return reply(200, { enabled: sub });
    }
    if (req.method === 'GET' && url.pathname === '/admin/stats') {
      return reply(200, { jwks_requests: jwksRequests, device_authorizations: deviceAuthorizations });
    }
    return reply(404, { error: 'unknown admin route' });
  };
}

install(makeProvider(jwks));

process.stderr.write(`test IdP listening at ${issuer}\n`);
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
