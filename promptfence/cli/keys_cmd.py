"""``promptfence keys generate``: the X25519 key pair that prompt logs are sealed to."""

from __future__ import annotations

import argparse
from pathlib import Path

from logs.sealing import KeyPair, key_id, write_key_pair
from promptfence.cli import add_config_option
from promptfence.config import Config, ensure_private_dir, load_config
from promptfence.errors import KeyMaterialError


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    ensure_private_dir(private_path.parent)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    pair = KeyPair.generate()
    try:
        write_key_pair(pair, private_path, public_path)
    except FileExistsError as exc:
        raise KeyMaterialError(str(exc)) from None
    return key_id(pair.public_key)


def ensure_default_recipient(config: Config) -> str | None:
    """With no recipients configured, make sure the default key pair exists.

    Returns the new key id when one was generated (so ``up`` can say so), else None. A
    configured recipient file that is missing is an error: generating a key nobody holds
    would make every record unreadable.
    """
    if config.logs.recipients:
        for path in config.logs.recipients:
            if not path.is_file():
                raise KeyMaterialError(f"recipient public key {path} does not exist (logs.recipients)")
        return None
    if config.default_public_key.is_file():
        return None
    return generate_key_pair(config.default_private_key, config.default_public_key)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = sub.add_parser("generate", help="create an X25519 key pair (private file mode 0600)")
    gen.add_argument("--private", metavar="FILE", help="private key file (default: <data_dir>/keys/admin.key)")
    gen.add_argument("--public", metavar="FILE", help="public key file (default: next to the private one, .pub)")
    add_config_option(gen)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    private = Path(args.private) if args.private else config.default_private_key
    public = Path(args.public) if args.public else private.with_suffix(".pub")
    kid = generate_key_pair(private, public)
    print(f"key id:      {kid}")
    print(f"private key: {private}  (mode 0600; keep it off the proxy host, with the security team)")
    print(f"public key:  {public}  (list it under logs.recipients in promptfence.yaml)")
    return 0
