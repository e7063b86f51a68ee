"""``promptfence identity``: users-file lines and who-is-who checks for the ``identity:`` section.

- ``hash-password USER``: reads the password from the terminal (or one line of stdin) and
  prints ``USER:$scrypt$...`` for ``identity.proxy_auth.users_file``;
- ``check-users``: loads the configured users file as the proxy would (every hash parsed and
  within the scrypt bounds) and says which line is wrong, if any;
- ``whois USER``: the groups the configured directory (and default group) give a user.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import sys

from promptfence.cli import add_config_option
from promptfence.config import load_config
from promptfence.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    hp = sub.add_parser("hash-password", help="print a users-file line (scrypt) for a user")
    hp.add_argument("user")
    check = sub.add_parser("check-users", help="check the users file the proxy would load")
    add_config_option(check)
    who = sub.add_parser("whois", help="the groups the directory gives a user")
    who.add_argument("user")
    add_config_option(who)


def run(args: argparse.Namespace) -> int:
    if args.identity_command == "hash-password":
        return _hash_password(args.user)
    if args.identity_command == "check-users":
        return _check_users(args.config)
    from proxy.identity import load_directory

    config = load_config(args.config)
    if config.identity.directory is None:
        raise ConfigError("no identity.directory configured", field="identity.directory")
    directory = load_directory(config.identity.directory)
    groups = directory.groups_for(args.user)
    if groups is None:
        default = config.identity.default_group
        print(f"{args.user}: not in the directory; default group: {default or '-'}")
    else:
        print(f"{args.user}: {', '.join(groups) or '-'}")
    return 0


def _hash_password(user: str) -> int:
    from proxy.identity import MAX_USER_CHARS, hash_password, parse_basic

    if ":" in user:
        raise ConfigError("a user name cannot contain ':' (HTTP Basic authentication forbids it)")
    if not user.strip() or user != user.strip() or len(user) > MAX_USER_CHARS or not user.isprintable():
        raise ConfigError(f"a user name must be 1 to {MAX_USER_CHARS} printable characters, without surrounding spaces")
    try:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {user}: ")
            if getpass.getpass("again: ") != password:
                raise ConfigError("the passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError("the password is not valid UTF-8 text") from None
    if not password:
        raise ConfigError("empty password")
    # What the proxy will accept from a browser: a password it would refuse could never sign in.
    if parse_basic("Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass")).decode()) != (
        user,
        password,
    ):
        raise ConfigError(
            "the proxy would refuse this password: it must be text without control characters, and user and "
            "password together at most about 3000 bytes"
        )
    print(f"{user}:{hash_password(password)}")
    return 0


def _check_users(config_path: str | None) -> int:
    from proxy.identity import load_users_file

    config = load_config(config_path)
    path = config.identity.proxy_auth.users_file
    if path is None:
        raise ConfigError("no identity.proxy_auth.users_file configured", field="identity.proxy_auth.users_file")
    users = load_users_file(path)  # a ConfigError names the file, line and user
    print(f"{path}: {len(users)} user{'s' if len(users) != 1 else ''}, every password hash within bounds")
    return 0
