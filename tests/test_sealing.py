"""Tests for logs.sealing: HPKE sealing in matched-data-cli v3 format, and key files."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from logs import sealing
from logs.sealing import (
    DEFAULT_IMPLEMENTATION,
    LIBRARY_SUITE,
    Implementation,
    KeyFileError,
    KeyPair,
    SealingError,
    key_id,
    load_private_key,
    load_public_key,
    open_sealed,
    seal,
    write_key_pair,
)

needs_library_hpke = pytest.mark.skipif(
    LIBRARY_SUITE is None, reason="this cryptography has no hazmat.primitives.hpke (the proxy env has one)"
)

CANARY = b"CANARY-PLAINTEXT-do-not-leak-4f1c"

# From cloudflare/matched-data-cli src/main.rs (test_decrypt) and README.md.
CF_PRIVATE_KEY = "uBS5eBttHrqkdY41kbZPdvYnNz8Vj0TvKIUpjB1y/GA="
CF_PUBLIC_KEY = "Ycig/Zr/pZmklmFUN99nr+taURlYItL91g+NcHGYpB8="
CF_BLOB = "AzTY6FHajXYXuDMUte82wrd+1n5CEHPoydYiyd3FMg5IEQAAAAAAAAA0lOhGXBclw8pWU5jbbYuepSIJN5JohTtZekLliJBlVWk="
CF_PLAINTEXT = b"test matched data"

SIZES = [0, 1, 1000, 1_000_000]


def _suite() -> CipherSuite:
    return CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


def _parse(blob: str) -> tuple[int, bytes, int, bytes]:
    """Independent parse of the v3 layout: (version, enc, length field, ct||tag)."""
    raw = base64.b64decode(blob, validate=True)
    return raw[0], raw[1:33], int.from_bytes(raw[33:41], "little"), raw[41:]


def _pack(enc: bytes, ct_and_tag: bytes, version: int = 3) -> str:
    ct, tag = ct_and_tag[:-16], ct_and_tag[-16:]
    raw = bytes([version]) + enc + len(ct).to_bytes(8, "little") + ct + tag
    return base64.b64encode(raw).decode("ascii")


def _payload(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return KeyPair.generate()


# --- 1. round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(pair: KeyPair, size: int) -> None:
    plaintext = _payload(size)
    blob = seal(pair.public_key, plaintext)
    assert blob.isascii()
    version, _enc, length, ct_and_tag = _parse(blob)
    assert version == 3
    assert length == size
    assert len(ct_and_tag) == size + 16
    assert open_sealed(pair.private_key, blob) == plaintext


def test_seal_is_randomized_and_hides_plaintext(pair: KeyPair) -> None:
    a, b = seal(pair.public_key, CANARY), seal(pair.public_key, CANARY)
    assert a != b  # fresh ephemeral key per blob
    assert CANARY not in base64.b64decode(a)
    assert open_sealed(pair.private_key, a) == open_sealed(pair.private_key, b) == CANARY


def test_open_tolerates_surrounding_whitespace(pair: KeyPair) -> None:
    blob = seal(pair.public_key, CANARY)
    assert open_sealed(pair.private_key, f"  {blob}\n") == CANARY


# --- 2. interop with an independent HPKE implementation (pyhpke) -------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_pyhpke_opens_our_blob(pair: KeyPair, size: int) -> None:
    plaintext = _payload(size)
    version, enc, length, ct_and_tag = _parse(seal(pair.public_key, plaintext))
    assert (version, length) == (3, size)
    suite = _suite()
    recipient = suite.create_recipient_context(enc, suite.kem.deserialize_private_key(pair.private_key))
    assert recipient.open(ct_and_tag, aad=b"") == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_we_open_pyhpke_sealed(pair: KeyPair, size: int) -> None:
    plaintext = _payload(size)
    suite = _suite()
    enc, sender = suite.create_sender_context(suite.kem.deserialize_public_key(pair.public_key))
    blob = _pack(enc, sender.seal(plaintext, aad=b""))
    assert open_sealed(pair.private_key, blob) == plaintext


# --- 2b. the library's HPKE and the hand-written key schedule open each other's blobs -----------


def test_library_hpke_is_the_default_where_installed() -> None:
    """The proxy's environment (mitmproxy there) pins a cryptography with HPKE: it seals with it."""
    if importlib.util.find_spec("mitmproxy") is not None:
        assert LIBRARY_SUITE is not None
    assert ("library" if LIBRARY_SUITE is not None else "handwritten") == DEFAULT_IMPLEMENTATION


@needs_library_hpke
@pytest.mark.parametrize("size", SIZES)
def test_library_sealed_opens_with_handwritten(pair: KeyPair, size: int) -> None:
    plaintext = _payload(size)
    blob = seal(pair.public_key, plaintext, implementation="library")
    assert _parse(blob)[:1] == (3,) and _parse(blob)[2] == size
    assert open_sealed(pair.private_key, blob, implementation="handwritten") == plaintext
    assert open_sealed(pair.private_key, blob, implementation="library") == plaintext


@needs_library_hpke
@pytest.mark.parametrize("size", SIZES)
def test_handwritten_sealed_opens_with_library(pair: KeyPair, size: int) -> None:
    plaintext = _payload(size)
    blob = seal(pair.public_key, plaintext, implementation="handwritten")
    assert open_sealed(pair.private_key, blob, implementation="library") == plaintext
    assert open_sealed(pair.private_key, blob, implementation="handwritten") == plaintext


@needs_library_hpke
def test_library_and_handwritten_agree_on_info() -> None:
    """A non-empty ``info`` (the format uses none) goes into both key schedules the same way."""
    recipient = X25519PrivateKey.from_private_bytes(_hex(RFC9180_A21["skRm"]))
    info = _hex(RFC9180_A21["info"])
    assert LIBRARY_SUITE is not None
    out = LIBRARY_SUITE.encrypt(CANARY, recipient.public_key(), info)
    assert sealing._handwritten_open(recipient, out[:32], out[32:], info=info) == CANARY
    enc, sealed = sealing._handwritten_seal(recipient.public_key().public_bytes_raw(), CANARY, info=info)
    assert LIBRARY_SUITE.decrypt(enc + sealed, recipient, info) == CANARY


@pytest.mark.parametrize("implementation", ["library", "handwritten"])
def test_failures_read_the_same_with_either(pair: KeyPair, sealed: str, implementation: Implementation) -> None:
    if implementation == "library" and LIBRARY_SUITE is None:
        pytest.skip("this cryptography has no HPKE")
    raw = bytearray(_raw(sealed))
    raw[-1] ^= 1
    for blob in (_b64(bytes(raw)), _b64(b"\x03" + bytes(32) + _raw(sealed)[33:])):
        with pytest.raises(SealingError, match="authentication failed"):
            open_sealed(pair.private_key, blob, implementation=implementation)
    with pytest.raises(SealingError, match="authentication failed"):
        open_sealed(KeyPair.generate().private_key, sealed, implementation=implementation)
    with pytest.raises(ValueError, match="low-order"):
        seal(bytes(32), CANARY, implementation=implementation)


# --- 2c. RFC 9180 test vectors: A.2.1, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305,
# base mode, the first encryption (sequence number 0). Values as printed in the RFC's appendix.

RFC9180_A21 = {
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b",
    "pkEm": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "skEm": "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
    "ikmR": "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df",
    "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    "enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "shared_secret": "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7",
    "key": "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91",
    "base_nonce": "5c4d98150661b848853b547f",
    "pt": "4265617574792069732074727574682c20747275746820626561757479",
    "aad": "436f756e742d30",
    "ct": "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
}


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def _public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def test_rfc9180_derive_key_pair() -> None:
    v = RFC9180_A21
    assert sealing.derive_private_key(_hex(v["ikmE"])) == _hex(v["skEm"])
    assert sealing.derive_private_key(_hex(v["ikmR"])) == _hex(v["skRm"])
    assert _public(_hex(v["skEm"])) == _hex(v["pkEm"])
    assert _public(_hex(v["skRm"])) == _hex(v["pkRm"])


def test_rfc9180_key_schedule_handwritten() -> None:
    v = RFC9180_A21
    dh = X25519PrivateKey.from_private_bytes(_hex(v["skEm"])).exchange(
        X25519PublicKey.from_public_bytes(_hex(v["pkRm"]))
    )
    shared, key, nonce = sealing._key_schedule(dh, _hex(v["enc"]), _hex(v["pkRm"]), _hex(v["info"]))
    assert (shared, key, nonce) == (_hex(v["shared_secret"]), _hex(v["key"]), _hex(v["base_nonce"]))


def test_rfc9180_seal_and_open_handwritten() -> None:
    v = RFC9180_A21
    enc, sealed = sealing._handwritten_seal(
        _hex(v["pkRm"]), _hex(v["pt"]), info=_hex(v["info"]), aad=_hex(v["aad"]), ephemeral_ikm=_hex(v["ikmE"])
    )
    assert (enc, sealed) == (_hex(v["enc"]), _hex(v["ct"]))
    recipient = X25519PrivateKey.from_private_bytes(_hex(v["skRm"]))
    opened = sealing._handwritten_open(recipient, enc, sealed, info=_hex(v["info"]), aad=_hex(v["aad"]))
    assert opened == _hex(v["pt"])


@needs_library_hpke
def test_rfc9180_open_with_library() -> None:
    """The library opens the RFC's ciphertext (its public API has no AAD parameter; the vector
    has one, so this uses the binding's AAD variant where present, else the info-only path)."""
    from cryptography.hazmat.bindings._rust import openssl as rust_openssl

    v = RFC9180_A21
    recipient = X25519PrivateKey.from_private_bytes(_hex(v["skRm"]))
    with_aad = getattr(rust_openssl.hpke, "_decrypt_with_aad", None)
    if with_aad is None:
        pytest.skip("this cryptography's HPKE takes no AAD")
    opened = with_aad(LIBRARY_SUITE, _hex(v["enc"]) + _hex(v["ct"]), recipient, _hex(v["info"]), _hex(v["aad"]))
    assert opened == _hex(v["pt"])


# --- 3. matched-data-cli test vector -----------------------------------------------------------


def test_matched_data_cli_vector() -> None:
    private_key = base64.b64decode(CF_PRIVATE_KEY)
    assert open_sealed(private_key, CF_BLOB) == CF_PLAINTEXT
    assert open_sealed(private_key, CF_BLOB, implementation="handwritten") == CF_PLAINTEXT
    if LIBRARY_SUITE is not None:
        assert open_sealed(private_key, CF_BLOB, implementation="library") == CF_PLAINTEXT


def test_matched_data_cli_key_pair_derivation() -> None:
    pair = KeyPair.from_private_key(base64.b64decode(CF_PRIVATE_KEY))
    assert pair.public_key == base64.b64decode(CF_PUBLIC_KEY)
    assert pair.key_id == key_id(pair.public_key)


def test_key_id() -> None:
    public = base64.b64decode(CF_PUBLIC_KEY)
    assert key_id(public) == hashlib.sha256(public).hexdigest()[:16]
    assert len(key_id(public)) == 16
    assert key_id(public) != key_id(KeyPair.generate().public_key)


# --- 4. failures to open -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed(pair: KeyPair) -> str:
    return seal(pair.public_key, CANARY)


def _assert_safe(exc: SealingError, pair: KeyPair) -> None:
    """The message must not leak plaintext or key material, in any encoding."""
    text = f"{exc} {exc!r}"
    for secret in (CANARY, pair.private_key):
        assert secret.decode("latin-1") not in text
        assert secret.hex() not in text
        assert base64.b64encode(secret).decode() not in text
    assert exc.__cause__ is None or CANARY.decode() not in str(exc.__cause__)


def _raw(blob: str) -> bytes:
    return base64.b64decode(blob)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


BAD_BLOBS: list[tuple[str, Callable[[str], str], str]] = [
    ("not base64", lambda b: "this is *not* base64!", "base64"),
    ("bad padding", lambda b: b[:-1], "base64"),
    ("non-ascii", lambda b: "é" + b, "base64"),
    ("empty", lambda b: "", "empty"),
    ("version 1", lambda b: _b64(b"\x01" + _raw(b)[1:]), "version 1"),
    ("version 2", lambda b: _b64(b"\x02" + _raw(b)[1:]), "version 2"),
    ("version only", lambda b: _b64(b"\x03"), "truncated"),
    ("truncated in enc", lambda b: _b64(_raw(b)[:20]), "truncated"),
    ("truncated in length", lambda b: _b64(_raw(b)[:37]), "truncated"),
    ("truncated in tag", lambda b: _b64(_raw(b)[:-1]), "length"),
    ("truncated in ciphertext", lambda b: _b64(_raw(b)[:-17]), "length"),
    ("low-order enc", lambda b: _b64(b"\x03" + bytes(32) + _raw(b)[33:]), "authentication"),
    ("trailing byte", lambda b: _b64(_raw(b) + b"\x00"), "length"),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in BAD_BLOBS], ids=[c[0] for c in BAD_BLOBS])
def test_malformed_blob(pair: KeyPair, sealed: str, mutate: Callable[[str], str], expected: str) -> None:
    with pytest.raises(SealingError, match=expected) as info:
        open_sealed(pair.private_key, mutate(sealed))
    _assert_safe(info.value, pair)


def test_wrong_private_key(pair: KeyPair, sealed: str) -> None:
    with pytest.raises(SealingError, match="authentication failed") as info:
        open_sealed(KeyPair.generate().private_key, sealed)
    _assert_safe(info.value, pair)


def test_wrong_length_private_key(pair: KeyPair, sealed: str) -> None:
    with pytest.raises(SealingError, match="32-byte"):
        open_sealed(pair.private_key[:31], sealed)


def test_every_flipped_byte_is_rejected(pair: KeyPair, sealed: str) -> None:
    raw = _raw(sealed)
    for index in range(len(raw)):
        for mask in (0x01, 0x80):
            tampered = bytearray(raw)
            tampered[index] ^= mask
            with pytest.raises(SealingError) as info:
                open_sealed(pair.private_key, _b64(bytes(tampered)))
            _assert_safe(info.value, pair)


def test_seal_rejects_bad_public_key() -> None:
    with pytest.raises(ValueError, match="32-byte"):
        seal(b"\x01" * 31, CANARY)
    with pytest.raises(ValueError, match="low-order"):
        seal(b"\x00" * 32, CANARY)


def test_key_pair_repr_hides_private_key(pair: KeyPair) -> None:
    assert repr(pair.private_key) not in repr(pair)
    assert pair.private_key.hex() not in repr(pair)


# --- 5. key files ------------------------------------------------------------------------------


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "admin.key.json", tmp_path / "admin.pub.json"


@pytest.fixture
def restore_umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_write_key_pair_modes_and_contents(paths: tuple[Path, Path], umask: int, restore_umask: None) -> None:
    private_path, public_path = paths
    pair = KeyPair.generate()
    os.umask(umask)
    write_key_pair(pair, private_path, public_path)
    assert _mode(private_path) == 0o600
    assert _mode(public_path) == 0o644
    assert json.loads(private_path.read_text()) == {
        "private_key": base64.b64encode(pair.private_key).decode(),
        "public_key": base64.b64encode(pair.public_key).decode(),
        "key_id": key_id(pair.public_key),
    }
    assert json.loads(public_path.read_text()) == {
        "public_key": base64.b64encode(pair.public_key).decode(),
        "key_id": key_id(pair.public_key),
    }
    assert sorted(p.name for p in private_path.parent.iterdir()) == sorted(
        [private_path.name, public_path.name]
    )  # no temp files left behind
    assert load_private_key(private_path) == pair
    assert load_public_key(public_path) == pair.public_key
    assert load_public_key(private_path) == pair.public_key


@pytest.mark.parametrize("existing", ["private", "public"])
def test_write_key_pair_refuses_to_overwrite(paths: tuple[Path, Path], existing: str) -> None:
    private_path, public_path = paths
    target = private_path if existing == "private" else public_path
    target.write_text("precious\n")
    with pytest.raises(FileExistsError, match="refusing to overwrite") as info:
        write_key_pair(KeyPair.generate(), private_path, public_path)
    assert str(target) in str(info.value)
    assert target.read_text() == "precious\n"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


@pytest.mark.parametrize("existing", ["private", "public"])
def test_write_key_pair_never_replaces_a_file_that_appears_late(
    paths: tuple[Path, Path], existing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The up-front existence check is racy; publishing itself must refuse to replace."""
    private_path, public_path = paths
    target = private_path if existing == "private" else public_path
    target.write_text("precious\n")
    monkeypatch.setattr("logs.sealing.os.path.lexists", lambda _path: False)
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_key_pair(KeyPair.generate(), private_path, public_path)
    monkeypatch.undo()
    assert target.read_text() == "precious\n"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no half pair, no temp


def test_load_matched_data_cli_formats(tmp_path: Path) -> None:
    cf_pair = {"private_key": CF_PRIVATE_KEY, "public_key": CF_PUBLIC_KEY}
    (tmp_path / "cf.json").write_text(json.dumps(cf_pair, indent=2))
    (tmp_path / "private_key.txt").write_text(CF_PRIVATE_KEY + "\n")
    (tmp_path / "public_key.txt").write_text(CF_PUBLIC_KEY + "\n")
    expected = KeyPair.from_private_key(base64.b64decode(CF_PRIVATE_KEY))
    assert load_private_key(tmp_path / "cf.json") == expected
    assert load_private_key(tmp_path / "private_key.txt") == expected
    assert load_public_key(tmp_path / "cf.json") == expected.public_key
    assert load_public_key(tmp_path / "public_key.txt") == expected.public_key


_KEY = KeyPair.from_private_key(bytes(range(32)))
_OTHER = KeyPair.from_private_key(bytes(range(1, 33)))
_PRIV = base64.b64encode(_KEY.private_key).decode()
_PUB = base64.b64encode(_KEY.public_key).decode()
_SHORT_PRIV = base64.b64encode(_KEY.private_key[:31]).decode()
_SHORT_PUB = base64.b64encode(_KEY.public_key[:31]).decode()
_OTHER_PUB = base64.b64encode(_OTHER.public_key).decode()

LoadFn = Callable[[Path], object]
BAD_KEY_FILES: list[tuple[str, LoadFn, str, str]] = [
    (
        "priv missing field",
        load_private_key,
        json.dumps({"public_key": _PUB}),
        "missing field 'private_key'",
    ),
    (
        "priv bad base64",
        load_private_key,
        json.dumps({"private_key": _PRIV + "!"}),
        "not valid base64",
    ),
    ("priv wrong length", load_private_key, json.dumps({"private_key": _SHORT_PRIV}), "31 bytes"),
    (
        "priv not string",
        load_private_key,
        json.dumps({"private_key": 5}),
        "must be a base64 string",
    ),
    (
        "priv mismatched public",
        load_private_key,
        json.dumps({"private_key": _PRIV, "public_key": _OTHER_PUB}),
        "does not match",
    ),
    (
        "priv mismatched key_id",
        load_private_key,
        json.dumps({"private_key": _PRIV, "key_id": key_id(_OTHER.public_key)}),
        "key_id does not match",
    ),
    ("priv bare bad base64", load_private_key, _PRIV[:-2] + "*=", "not valid base64"),
    ("priv bad json", load_private_key, '{"private_key": "' + _PRIV, "not valid JSON"),
    ("priv json list", load_private_key, json.dumps([_PRIV]), "JSON object"),
    ("priv empty", load_private_key, "", "empty"),
    (
        "pub missing field",
        load_public_key,
        json.dumps({"key_id": _KEY.key_id}),
        "missing field 'public_key'",
    ),
    ("pub bad base64", load_public_key, json.dumps({"public_key": "%" + _PUB}), "not valid base64"),
    ("pub wrong length", load_public_key, json.dumps({"public_key": _SHORT_PUB}), "31 bytes"),
    ("pub bare wrong length", load_public_key, _SHORT_PUB + "\n", "31 bytes"),
    ("pub two lines", load_public_key, _PUB + "\n" + _PUB + "\n", "single base64 line"),
    (
        "pub mismatched key_id",
        load_public_key,
        json.dumps({"public_key": _PUB, "key_id": "0" * 16}),
        "key_id does not match",
    ),
    ("pub from bad private", load_public_key, json.dumps({"private_key": _SHORT_PRIV}), "31 bytes"),
]


@pytest.mark.parametrize(
    ("load", "content", "expected"),
    [c[1:] for c in BAD_KEY_FILES],
    ids=[c[0] for c in BAD_KEY_FILES],
)
def test_load_errors_name_file_and_hide_key(tmp_path: Path, load: LoadFn, content: str, expected: str) -> None:
    path = tmp_path / "key.json"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=expected) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message
    for material in (_PRIV, _PUB, _SHORT_PRIV, _SHORT_PUB, _OTHER_PUB, _PRIV[:20], _PUB[:20]):
        assert material not in message
    assert _KEY.private_key.hex()[:16] not in message


@pytest.mark.parametrize("load", [load_private_key, load_public_key])
def test_load_missing_file(tmp_path: Path, load: LoadFn) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(KeyFileError, match="cannot read key file") as info:
        load(path)
    assert str(path) in str(info.value)


def test_written_key_file_opens_sealed_records(paths: tuple[Path, Path]) -> None:
    private_path, public_path = paths
    write_key_pair(KeyPair.generate(), private_path, public_path)
    blob = seal(load_public_key(public_path), CANARY)
    assert open_sealed(load_private_key(private_path).private_key, blob) == CANARY
