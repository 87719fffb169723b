// Drives stackgate's token API with the official Contentstack JavaScript management SDK
// (@contentstack/management from npm), as its documentation shows:
// managementToken(uid).fetch(), change a field, then .update() on the fetched object
// (which sends back every field the API returned).
// Usage: node js_sdk.mjs SDK_DIR HOST:PORT API_KEY OWNER_AUTHTOKEN TOKEN_UID
// SDK_DIR is the npm prefix the SDK was installed into (scripts/test.sh: target/js-sdk).
// Prints one line per call: <name> ok <json> | <name> error <status> <json>.
import { createRequire } from 'node:module';
import path from 'node:path';

const [sdkDir, host, apiKey, ownerAuthtoken, uid] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(sdkDir), 'package.json'));
const contentstack = require('@contentstack/management');

const client = contentstack.client({
  endpoint: `http://${host}/v3`,
  authtoken: ownerAuthtoken,
  retryOnError: false,
  retryOnHttpServerError: false,
  retryOnNetworkFailure: false,
  logHandler: () => {},
});
const stack = client.stack({ api_key: apiKey });

function report(name, value) {
  console.log(`${name} ok ${JSON.stringify(value)}`);
}

function failure(name, e) {
  const status = e.status ?? e.response?.status ?? 'none';
  const body = { message: e.errorMessage ?? e.message, errors: e.errors ?? null };
  console.log(`${name} error ${status} ${JSON.stringify(body)}`);
}

try {
  const token = await stack.managementToken(uid).fetch();
  report('fetch', { uid: token.uid, description: token.description });
  token.description = 'updated by the js sdk';
  try {
    const updated = await token.update();
    report('update', { uid: updated.uid, description: updated.description });
  } catch (e) {
    failure('update', e);
  }
} catch (e) {
  failure('fetch', e);
}
