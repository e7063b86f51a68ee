"""Seal log payloads to an admin's X25519 public key so only the admin can read them.

The logger holds only the public key: a compromised log host or database dump reveals nothing
about prompt contents, while an admin with the private key can still open a record when an
investigation needs it.

The wire format is Cloudflare's matched-data-cli format version 3, so the admin may open blobs
with that tool as well as with :func:`open_sealed`::

    base64( 0x03 || enc[32] || u64_le(len(ct)) || ct || tag[16] )

Encryption is HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
ChaCha20-Poly1305, empty ``info`` and empty AAD. Each blob is a fresh single-shot context, so
the sequence number is 0 and the nonce is ``base_nonce``.

Sealing and opening use ``cryptography``'s own RFC 9180 implementation
(``cryptography.hazmat.primitives.hpke``) where the installed version has it (the proxy's
environment pins a current one). The key schedule written out below on ``cryptography``
primitives is the fallback for an older ``cryptography`` and the cross-check: the tests seal with
each and open with the other, run both against the RFC 9180 test vectors (A.2.1) and against
``pyhpke``, and open the matched-data-cli test vector with both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

try:  # RFC 9180 HPKE in the library (recent cryptography releases)
    from cryptography.hazmat.primitives import hpke as _hpke
except ImportError:  # an older cryptography: the key schedule below does it
    _hpke = None  # type: ignore[assignment]

__all__ = [
    "KeyFileError",
    "KeyPair",
    "SealingError",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_sealed",
    "seal",
    "write_key_pair",
]

FORMAT_VERSION = 3
KEY_LEN = 32
_TAG_LEN = 16
_LEN_FIELD = 8
_HEADER_LEN = 1 + KEY_LEN + _LEN_FIELD
_MIN_BLOB_LEN = _HEADER_LEN + _TAG_LEN

_HPKE_V1 = b"HPKE-v1"
_KEM_SUITE_ID = b"KEM\x00\x20"  # DHKEM(X25519, HKDF-SHA256)
_HPKE_SUITE_ID = b"HPKE\x00\x20\x00\x01\x00\x03"  # KEM 0x0020, KDF 0x0001, AEAD 0x0003
_MODE_BASE = b"\x00"
_AUTH_FAILED = "cannot open sealed payload: authentication failed (wrong private key or corrupted data)"
_LOW_ORDER = "public key is a low-order X25519 point and cannot be sealed to"

Implementation = Literal["library", "handwritten"]
# cryptography's HPKE suite for this format, or None where the installed version has no HPKE.
LIBRARY_SUITE = (
    _hpke.Suite(_hpke.KEM.X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.CHACHA20_POLY1305) if _hpke is not None else None
)
DEFAULT_IMPLEMENTATION: Implementation = "library" if LIBRARY_SUITE is not None else "handwritten"


class SealingError(Exception):
    """A sealed payload could not be opened.

    One type for every cause so callers need a single ``except``; the message says which cause
    but never contains plaintext or key material, so it is safe to log.
    """


class KeyFileError(ValueError):
    """A key file is unreadable or malformed; the message names the file, never the key."""


@dataclass(frozen=True)
class KeyPair:
    """A raw X25519 key pair; ``repr`` omits the private key so it cannot leak into logs."""

    private_key: bytes = field(repr=False)
    public_key: bytes

    def __post_init__(self) -> None:
        _check_len("private key", self.private_key, ValueError)
        _check_len("public key", self.public_key, ValueError)

    @classmethod
    def generate(cls) -> KeyPair:
        """Create a fresh key pair from the OS CSPRNG."""
        return cls.from_private_key(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_private_key(cls, private_key: bytes) -> KeyPair:
        """Rebuild the pair from the private key alone (the public key is derived from it)."""
        _check_len("private key", private_key, ValueError)
        public = X25519PrivateKey.from_private_bytes(private_key).public_key().public_bytes_raw()
        return cls(private_key=private_key, public_key=public)

    @property
    def key_id(self) -> str:
        """Short fingerprint of the public key, see :func:`key_id`."""
        return key_id(self.public_key)


def key_id(public_key: bytes) -> str:
    """Fingerprint a public key so records can say which key sealed them without storing it."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def seal(public_key: bytes, plaintext: bytes, *, implementation: Implementation | None = None) -> str:
    """Encrypt ``plaintext`` so only the holder of the matching private key can read it.

    Returns the matched-data-cli v3 blob as an ASCII base64 string. Raises ``ValueError`` if
    ``public_key`` is not a usable raw X25519 public key (a configuration error, so it is not
    a :class:`SealingError`). ``implementation`` picks the HPKE code (default: the library's
    where installed); both produce the same format, and either opens the other's blobs.
    """
    _check_len("public key", public_key, ValueError)
    recipient = X25519PublicKey.from_public_bytes(public_key)
    if (implementation or DEFAULT_IMPLEMENTATION) == "library":
        enc, sealed = _library_seal(recipient, plaintext)
    else:
        enc, sealed = _handwritten_seal(public_key, plaintext)
    ciphertext, tag = sealed[:-_TAG_LEN], sealed[-_TAG_LEN:]
    length = len(ciphertext).to_bytes(_LEN_FIELD, "little")
    blob = bytes((FORMAT_VERSION,)) + enc + length + ciphertext + tag
    return base64.b64encode(blob).decode("ascii")


def _library_seal(recipient: X25519PublicKey, plaintext: bytes) -> tuple[bytes, bytes]:
    if LIBRARY_SUITE is None:
        raise ValueError("this cryptography has no HPKE (cryptography.hazmat.primitives.hpke)")
    try:
        out = LIBRARY_SUITE.encrypt(plaintext, recipient)
    except ValueError:  # the shared secret is all zero
        raise ValueError(_LOW_ORDER) from None
    return out[:KEY_LEN], out[KEY_LEN:]


def _handwritten_seal(
    public_key: bytes, plaintext: bytes, *, info: bytes = b"", aad: bytes = b"", ephemeral_ikm: bytes | None = None
) -> tuple[bytes, bytes]:
    """RFC 9180 SetupBaseS + Seal (sequence 0): ``(enc, ciphertext || tag)``. ``ephemeral_ikm``
    derives the ephemeral key (DeriveKeyPair) instead of generating it: for the test vectors."""
    if ephemeral_ikm is None:
        ephemeral = X25519PrivateKey.generate()
    else:
        ephemeral = X25519PrivateKey.from_private_bytes(derive_private_key(ephemeral_ikm))
    enc = ephemeral.public_key().public_bytes_raw()
    try:
        dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        raise ValueError(_LOW_ORDER) from None
    _shared, key, nonce = _key_schedule(dh, enc, public_key, info)
    return enc, ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad or None)


def open_sealed(private_key: bytes, blob: str, *, implementation: Implementation | None = None) -> bytes:
    """Decrypt a blob made by :func:`seal` (or by Cloudflare's WAF payload logging).

    Raises :class:`SealingError` on any failure: bad base64, truncated or malformed blob,
    unsupported format version, wrong private key, or tampered data.
    """
    _check_len("private key", private_key, SealingError)
    try:
        raw = base64.b64decode(blob.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SealingError("cannot open sealed payload: it is not valid base64") from None
    if not raw:
        raise SealingError("cannot open sealed payload: it is empty")
    if raw[0] != FORMAT_VERSION:
        raise SealingError(
            f"cannot open sealed payload: unsupported format version {raw[0]} "
            f"(only version {FORMAT_VERSION} is supported)"
        )
    if len(raw) < _MIN_BLOB_LEN:
        raise SealingError(f"cannot open sealed payload: truncated ({len(raw)} bytes, at least {_MIN_BLOB_LEN} needed)")
    enc = raw[1 : 1 + KEY_LEN]
    ct_len = int.from_bytes(raw[1 + KEY_LEN : _HEADER_LEN], "little")
    if ct_len != len(raw) - _MIN_BLOB_LEN:
        raise SealingError(
            f"cannot open sealed payload: length field says {ct_len} ciphertext bytes "
            f"but {len(raw) - _MIN_BLOB_LEN} are present (truncated or corrupted)"
        )
    recipient = X25519PrivateKey.from_private_bytes(private_key)
    try:
        if (implementation or DEFAULT_IMPLEMENTATION) == "library":
            if LIBRARY_SUITE is None:
                raise SealingError("cannot open sealed payload: this cryptography has no HPKE")
            return LIBRARY_SUITE.decrypt(enc + raw[_HEADER_LEN:], recipient)
        return _handwritten_open(recipient, enc, raw[_HEADER_LEN:])
    except (InvalidTag, ValueError):
        # Wrong key or tampered data; or a low-order ephemeral key, whose all-zero secret
        # RFC 9180 says to reject.
        raise SealingError(_AUTH_FAILED) from None


def _handwritten_open(
    recipient: X25519PrivateKey, enc: bytes, sealed: bytes, *, info: bytes = b"", aad: bytes = b""
) -> bytes:
    """RFC 9180 SetupBaseR + Open (sequence 0); ``InvalidTag`` / ``ValueError`` when it fails."""
    dh = recipient.exchange(X25519PublicKey.from_public_bytes(enc))
    _shared, key, nonce = _key_schedule(dh, enc, recipient.public_key().public_bytes_raw(), info)
    return ChaCha20Poly1305(key).decrypt(nonce, sealed, aad or None)


# --- RFC 9180 key schedule -------------------------------------------------------------------


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract is HMAC keyed by the salt; an empty salt equals RFC 5869's all-zero default.
    mac = hmac.HMAC(salt, hashes.SHA256())
    mac.update(_HPKE_V1 + suite_id + label + ikm)
    return mac.finalize()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + _HPKE_V1 + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def _key_schedule(dh: bytes, enc: bytes, recipient_public: bytes, info: bytes = b"") -> tuple[bytes, bytes, bytes]:
    """DHKEM ExtractAndExpand then the base-mode KeySchedule: (shared_secret, key, base_nonce)."""
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    shared_secret = _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", enc + recipient_public, 32)
    psk_id_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"info_hash", info)
    context = _MODE_BASE + psk_id_hash + info_hash
    secret = _labeled_extract(_HPKE_SUITE_ID, shared_secret, b"secret", b"")
    key = _labeled_expand(_HPKE_SUITE_ID, secret, b"key", context, 32)
    base_nonce = _labeled_expand(_HPKE_SUITE_ID, secret, b"base_nonce", context, 12)
    return shared_secret, key, base_nonce


def derive_private_key(ikm: bytes) -> bytes:
    """RFC 9180 DeriveKeyPair for X25519 (section 7.1.3): the private key made from ``ikm``."""
    dkp_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"dkp_prk", ikm)
    return _labeled_expand(_KEM_SUITE_ID, dkp_prk, b"sk", b"", KEY_LEN)


def _check_len(what: str, key: bytes, error: type[Exception]) -> None:
    if len(key) != KEY_LEN:
        raise error(f"{what} must be a raw {KEY_LEN}-byte X25519 key, got {len(key)} bytes")


# --- key files -------------------------------------------------------------------------------


def write_key_pair(pair: KeyPair, private_path: Path, public_path: Path) -> None:
    """Write the private key (mode 0600) and public key (mode 0644) as JSON files.

    The private file uses matched-data-cli's ``generate-key-pair`` field names plus ``key_id``,
    so either tool can read it. Each file appears atomically and complete, and an existing file
    is never overwritten (``FileExistsError``): replacing a private key would make every record
    sealed to it unreadable.
    """
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise FileExistsError(f"refusing to overwrite existing key file {path}")
    public_doc = {"public_key": _b64(pair.public_key), "key_id": pair.key_id}
    private_doc = {"private_key": _b64(pair.private_key), **public_doc}
    _write_new_file(private_path, _json_bytes(private_doc), 0o600)
    try:
        _write_new_file(public_path, _json_bytes(public_doc), 0o644)
    except BaseException:
        # Do not leave half a pair behind; nothing can have been sealed to it yet.
        private_path.unlink(missing_ok=True)
        raise


def load_private_key(path: Path) -> KeyPair:
    """Load a private key file written by :func:`write_key_pair` or matched-data-cli.

    Accepts the JSON form (``public_key`` and ``key_id`` are checked when present) or a file
    holding just the base64 private key, as matched-data-cli's ``decrypt -k`` expects.
    """
    content = _read_key_file(path)
    if isinstance(content, str):
        return KeyPair.from_private_key(_decode_key(path, "private key", content))
    return _pair_from_json(path, content)


def load_public_key(path: Path) -> bytes:
    """Load the raw public key from a public JSON file, a private JSON file, or a base64 line.

    Accepting the private file lets an admin point the logger at whatever they have, but the
    logger then only keeps the derived public key.
    """
    content = _read_key_file(path)
    if isinstance(content, str):
        return _decode_key(path, "public key", content)
    if "private_key" in content:
        return _pair_from_json(path, content).public_key
    public = _decode_key(path, "field 'public_key'", _field(path, content, "public_key"))
    _check_key_id(path, content, public)
    return public


def _read_key_file(path: Path) -> dict[str, object] | str:
    """Return the JSON object, or the single non-JSON line, of a key file."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise KeyFileError(f"cannot read key file {path}: {reason}") from None
    if not text:
        raise KeyFileError(f"key file {path} is empty")
    if text[0] not in '{["':
        if "\n" in text:
            raise KeyFileError(f"key file {path} is neither JSON nor a single base64 line")
        return text
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeyFileError(f"key file {path} is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"key file {path} must contain a JSON object")
    return doc


def _pair_from_json(path: Path, doc: dict[str, object]) -> KeyPair:
    private = _decode_key(path, "field 'private_key'", _field(path, doc, "private_key"))
    pair = KeyPair.from_private_key(private)
    if "public_key" in doc:
        stored = _decode_key(path, "field 'public_key'", _field(path, doc, "public_key"))
        if stored != pair.public_key:
            raise KeyFileError(f"key file {path}: public_key does not match private_key")
    _check_key_id(path, doc, pair.public_key)
    return pair


def _field(path: Path, doc: dict[str, object], name: str) -> str:
    value = doc.get(name)
    if value is None:
        raise KeyFileError(f"key file {path}: missing field '{name}'")
    if not isinstance(value, str):
        raise KeyFileError(f"key file {path}: field '{name}' must be a base64 string")
    return value


def _decode_key(path: Path, what: str, text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"key file {path}: {what} is not valid base64") from None
    if len(raw) != KEY_LEN:
        raise KeyFileError(f"key file {path}: {what} is {len(raw)} bytes, expected a {KEY_LEN}-byte X25519 key")
    return raw


def _check_key_id(path: Path, doc: dict[str, object], public_key: bytes) -> None:
    # key_id is not secret, but do not echo the file's value: it may be arbitrary junk.
    if "key_id" in doc and doc["key_id"] != key_id(public_key):
        raise KeyFileError(f"key file {path}: key_id does not match the key")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_bytes(doc: dict[str, str]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and ``mode`` atomically, failing if it already exists.

    The temp file is created O_EXCL with the final mode, so the key is never readable by
    others even for an instant; it is published with a hard link, which (unlike rename)
    refuses to replace a file that appeared in the meantime.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we promised
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"refusing to overwrite existing key file {path}") from None
        except OSError:
            # Filesystem without hard links: fall back to check-then-rename.
            if os.path.lexists(path):
                raise FileExistsError(f"refusing to overwrite existing key file {path}") from None
            os.rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform; the file itself is already synced
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
