// Open PromptFence log payloads in the browser: HPKE (RFC 9180) base mode,
// DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305, empty info and AAD, in
// Cloudflare matched-data-cli's v3 blob format:
//   base64( 0x03 || enc[32] || u64_le(len(ct)) || ct || tag[16] )
// X25519 and HKDF come from WebCrypto; ChaCha20-Poly1305 from the vendored, audited
// @noble/ciphers (WebCrypto has no ChaCha). The private key never leaves this module's
// CryptoKey objects (imported non-extractable) and is never sent anywhere.

import { chacha20poly1305 } from "./vendor/noble-ciphers/chacha.js";

const subtle = globalThis.crypto.subtle;
const utf8 = new TextEncoder();
const HPKE_V1 = utf8.encode("HPKE-v1");
const KEM_SUITE_ID = new Uint8Array([0x4b, 0x45, 0x4d, 0x00, 0x20]); // "KEM" || 0x0020
const HPKE_SUITE_ID = new Uint8Array([0x48, 0x50, 0x4b, 0x45, 0x00, 0x20, 0x00, 0x01, 0x00, 0x03]);
// PKCS#8 wrapping of a raw X25519 private key (RFC 8410): WebCrypto imports private keys only so.
const PKCS8_X25519 = new Uint8Array([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);
const FORMAT_VERSION = 3;
const HEADER_LEN = 1 + 32 + 8;
const TAG_LEN = 16;

/** The key file could not be used (bad format, inconsistent fields, no X25519 support). */
export class KeyFileError extends Error {}
/** A blob could not be opened; the message never contains plaintext or key material. */
export class OpenError extends Error {}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

function i2osp2(n) { return new Uint8Array([(n >> 8) & 0xff, n & 0xff]); }

export function b64decode(text) {
  const clean = String(text).trim();
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 !== 0) throw new TypeError("not valid base64");
  const bin = atob(clean);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function b64encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** Same fingerprint as logs.sealing.key_id: first 16 hex digits of SHA-256(public key). */
export async function keyId(publicKey) {
  const digest = new Uint8Array(await subtle.digest("SHA-256", publicKey));
  return Array.from(digest.slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function hkdf(salt, ikm, info, length) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, length * 8);
  return new Uint8Array(bits);
}

// LabeledExtract("", label, "") for the constant psk_id_hash / info_hash. An empty HMAC key
// equals 32 zero bytes (both are zero-padded to the block size); WebCrypto refuses empty keys.
async function labeledExtractEmpty(label) {
  const key = await subtle.importKey("raw", new Uint8Array(32), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle.sign("HMAC", key, concat(HPKE_V1, HPKE_SUITE_ID, utf8.encode(label))));
}

function labeledInfo(suite, label, context, length) {
  return concat(i2osp2(length), HPKE_V1, suite, utf8.encode(label), context);
}

async function x25519(privateKey, publicBytes) {
  const pub = await subtle.importKey("raw", publicBytes, { name: "X25519" }, false, []);
  return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: pub }, privateKey, 256));
}

/**
 * Parse a private key file as `promptfence keys generate` or matched-data-cli write it: JSON with
 * `private_key` (and optionally `public_key`, `key_id`), or one base64 line.
 * Returns { privateKey: CryptoKey, publicKey: Uint8Array, keyId: string }.
 */
export async function loadPrivateKey(text) {
  let encoded = String(text).trim();
  let doc = null;
  if (encoded.startsWith("{")) {
    try { doc = JSON.parse(encoded); } catch { throw new KeyFileError("The key file is not valid JSON."); }
    if (typeof doc.private_key !== "string") {
      throw new KeyFileError("The key file has no private_key: load the private key (admin.key), not the public one.");
    }
    encoded = doc.private_key;
  } else if (encoded.includes("\n")) {
    throw new KeyFileError("The key file is neither JSON nor a single base64 line.");
  }
  let raw;
  try { raw = b64decode(encoded); } catch { throw new KeyFileError("The private key is not valid base64."); }
  if (raw.length !== 32) throw new KeyFileError(`The private key is ${raw.length} bytes; a 32-byte X25519 key is expected.`);
  let privateKey;
  try {
    privateKey = await subtle.importKey("pkcs8", concat(PKCS8_X25519, raw), { name: "X25519" }, false, ["deriveBits"]);
  } catch {
    throw new KeyFileError("This browser cannot import X25519 keys (WebCrypto X25519 is needed: Chromium 133+, Firefox 130+).");
  }
  raw.fill(0);
  const basepoint = new Uint8Array(32);
  basepoint[0] = 9;
  const publicKey = await x25519(privateKey, basepoint);
  const kid = await keyId(publicKey);
  if (doc && typeof doc.public_key === "string" && doc.public_key.trim() !== b64encode(publicKey)) {
    throw new KeyFileError("The key file's public_key does not match its private_key.");
  }
  if (doc && doc.key_id !== undefined && doc.key_id !== kid) {
    throw new KeyFileError("The key file's key_id does not match its key.");
  }
  return { privateKey, publicKey, keyId: kid };
}

/** Open one matched-data-cli v3 blob with a key from loadPrivateKey; returns the plaintext bytes. */
export async function openSealed(key, blob) {
  let raw;
  try { raw = b64decode(blob); } catch { throw new OpenError("The sealed payload is not valid base64."); }
  if (raw.length === 0) throw new OpenError("The sealed payload is empty.");
  if (raw[0] !== FORMAT_VERSION) throw new OpenError(`Unsupported sealed format version ${raw[0]}.`);
  if (raw.length < HEADER_LEN + TAG_LEN) throw new OpenError("The sealed payload is truncated.");
  const enc = raw.slice(1, 33);
  const view = new DataView(raw.buffer, raw.byteOffset + 33, 8);
  const ctLen = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  if (ctLen !== raw.length - HEADER_LEN - TAG_LEN) throw new OpenError("The sealed payload is truncated or corrupted.");
  let dh;
  try { dh = await x25519(key.privateKey, enc); } catch { throw new OpenError(AUTH_FAILED); }
  const sharedSecret = await hkdf(
    new Uint8Array(0),
    concat(HPKE_V1, KEM_SUITE_ID, utf8.encode("eae_prk"), dh),
    labeledInfo(KEM_SUITE_ID, "shared_secret", concat(enc, key.publicKey), 32),
    32,
  );
  const context = concat(new Uint8Array([0]), await labeledExtractEmpty("psk_id_hash"), await labeledExtractEmpty("info_hash"));
  const secretIkm = concat(HPKE_V1, HPKE_SUITE_ID, utf8.encode("secret"));
  const aeadKey = await hkdf(sharedSecret, secretIkm, labeledInfo(HPKE_SUITE_ID, "key", context, 32), 32);
  const nonce = await hkdf(sharedSecret, secretIkm, labeledInfo(HPKE_SUITE_ID, "base_nonce", context, 12), 12);
  try {
    return chacha20poly1305(aeadKey, nonce).decrypt(raw.slice(HEADER_LEN));
  } catch {
    throw new OpenError(AUTH_FAILED);
  } finally {
    aeadKey.fill(0);
  }
}

const AUTH_FAILED = "Authentication failed: this key does not open the record (wrong private key or corrupted data).";

/** Open a record from the viewer API ({record_id, sealed: {key_id: blob}}); returns the payload object. */
export async function openRecord(key, record) {
  const blob = record.sealed[key.keyId];
  if (blob === undefined) {
    const ids = Object.keys(record.sealed).sort().join(", ") || "no key";
    throw new OpenError(`Wrong key: this record was sealed to key id ${ids}; the key ${key.keyId} does not open it.`);
  }
  const plaintext = await openSealed(key, blob);
  return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(plaintext));
}
