// Completes a device-flow (RFC 8628) login at the test IdP without a browser.
//
//   node tests/idp/login.mjs VERIFICATION_URL LOGIN [USER_CODE]
//
// VERIFICATION_URL is the URL the gateway shows at its second prompt
// (http://127.0.0.1:PORT/device?user_code=XXXX-XXXX). When it carries no
// user_code, give the code as the third argument. LOGIN becomes the ID
// token's subject (see accounts.json for the groups: alice is in
// developers, admin in admins); the password is irrelevant at the test IdP.
//
// The steps are those of `complete_device_login` in tests/common/idp.rs:
// GET the verification page (it carries the xsrf token), POST the user code
// with confirm=yes, then follow redirects and answer the login and consent
// interactions until the IdP shows "Sign-in Success".
//
// Prints "logged in as LOGIN" and exits 0, or prints the reason to stderr
// and exits 1 (2 for bad usage).

const [, , verification, login, codeArg] = process.argv;

function usage(message) {
  if (message) process.stderr.write(`login.mjs: ${message}\n`);
  process.stderr.write('usage: node tests/idp/login.mjs VERIFICATION_URL LOGIN [USER_CODE]\n');
  process.exit(2);
}

function fail(message) {
  process.stderr.write(`login.mjs: login failed: ${message}\n`);
  process.exit(1);
}

if (!verification || !login) usage();

let pageUrl;
try {
  pageUrl = new URL(verification);
} catch {
  usage(`not a URL: ${verification}`);
}
if (pageUrl.protocol !== 'http:' && pageUrl.protocol !== 'https:') {
  usage(`not an http(s) URL: ${verification}`);
}
const userCode = codeArg ?? pageUrl.searchParams.get('user_code');
if (!userCode) {
  usage(`${verification} has no user_code; pass the code shown by the gateway as the third argument`);
}

// A tiny cookie jar: name -> { value, path }, honouring Path, Max-Age and
// Expires well enough for oidc-provider's cookies on one host.
const jar = new Map();

function storeCookies(response, requestUrl) {
  const lines = typeof response.headers.getSetCookie === 'function'
    ? response.headers.getSetCookie()
    : (response.headers.get('set-cookie') ?? '').split(/,(?=\s*[^;,=\s]+=)/).filter(Boolean);
  for (const line of lines) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq <= 0) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const dir = requestUrl.pathname.replace(/\/[^/]*$/, '') || '/';
    let path = dir;
    let expired = false;
    for (const attr of attrs) {
      const [k, ...rest] = attr.split('=');
      const key = k.trim().toLowerCase();
      const v = rest.join('=').trim();
      if (key === 'path' && v.startsWith('/')) path = v;
      if (key === 'max-age' && Number(v) <= 0) expired = true;
      if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
    }
    const id = `${name}\0${path}`;
    if (expired || value === '') jar.delete(id);
    else jar.set(id, { name, value, path });
  }
}

function cookieHeader(url) {
  const matches = [...jar.values()].filter(
    (c) => url.pathname === c.path || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`),
  );
  return matches.map((c) => `${c.name}=${c.value}`).join('; ');
}

async function request(url, form) {
  const headers = {};
  const cookies = cookieHeader(url);
  if (cookies) headers.cookie = cookies;
  const init = { method: form ? 'POST' : 'GET', headers, redirect: 'manual' };
  if (form) init.body = new URLSearchParams(form);
  let response;
  try {
    response = await fetch(url, { ...init, signal: AbortSignal.timeout(30_000) });
  } catch (e) {
    fail(`cannot reach ${url.origin} (${e.cause?.code ?? e.cause?.message ?? e.message}); is the test IdP running?`);
  }
  storeCookies(response, url);
  return response;
}

function htmlUnescape(s) {
  return s
    .replaceAll('&quot;', '"')
    .replaceAll('&#39;', "'")
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');
}

// Value of the first <input ... name="NAME" value="..."> in html.
function hiddenValue(html, name) {
  const marker = `name="${name}" value="`;
  const start = html.indexOf(marker);
  if (start < 0) return undefined;
  const from = start + marker.length;
  const end = html.indexOf('"', from);
  return end < 0 ? undefined : htmlUnescape(html.slice(from, end));
}

// The action of the first <form> in html, resolved against base.
function formAction(html, base) {
  const form = html.indexOf('<form');
  if (form < 0) return base;
  const marker = 'action="';
  const start = html.indexOf(marker, form);
  if (start < 0) return base;
  const from = start + marker.length;
  const end = html.indexOf('"', from);
  return end < 0 ? base : new URL(htmlUnescape(html.slice(from, end)), base);
}

// Text of the page for an error message: the <p> or <h1> contents, else the start.
function pageText(html) {
  const bits = [...html.matchAll(/<(?:h1|p)[^>]*>([\s\S]*?)<\/(?:h1|p)>/g)]
    .map((m) => m[1].replace(/<[^>]+>/g, '').trim())
    .filter(Boolean);
  return (bits.length ? bits.join(' / ') : html.slice(0, 300)).replace(/\s+/g, ' ');
}

// 1. The verification page carries the session's xsrf token.
let url = pageUrl;
let response = await request(url);
let body = await response.text();
if (!response.ok) fail(`verification page ${url} answered ${response.status}: ${pageText(body)}`);
const xsrf = hiddenValue(body, 'xsrf');
if (!xsrf) fail(`no xsrf token on the verification page ${url}; is this the test IdP's /device page?`);

// 2. Submit the code and confirm in one step.
let action = formAction(body, url);
response = await request(action, { xsrf, user_code: userCode, confirm: 'yes' });
url = action;

// 3. Follow redirects and answer login / consent until success.
for (let step = 0; step < 20; step += 1) {
  if (response.status >= 300 && response.status < 400) {
    const location = response.headers.get('location');
    if (!location) fail(`redirect without Location from ${url}`);
    await response.arrayBuffer();
    url = new URL(location, url);
    response = await request(url);
    continue;
  }
  body = await response.text();
  if (body.includes('Sign-in Success')) {
    process.stdout.write(`logged in as ${login}\n`);
    process.exit(0);
  }
  if (!response.ok) fail(`${url} answered ${response.status}: ${pageText(body)}`);
  const prompt = hiddenValue(body, 'prompt');
  if (!prompt) {
    fail(`unexpected page at ${url} (wrong, used or expired user code?): ${pageText(body)}`);
  }
  action = formAction(body, url);
  let form;
  if (prompt === 'login') form = { prompt: 'login', login, password: 'x' };
  else if (prompt === 'consent') form = { prompt: 'consent' };
  else fail(`unknown interaction prompt ${JSON.stringify(prompt)} at ${url}`);
  response = await request(action, form);
  url = action;
}
fail(`did not finish after 20 steps (last ${url})`);
