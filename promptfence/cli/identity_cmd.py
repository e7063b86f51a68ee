"""``promptfence identity``: users-file lines and who-is-who checks for the ``identity:`` section.

- ``hash-password USER``: reads the password from the terminal (or one line of stdin) and
  prints ``USER:$scrypt$...`` for ``identity.proxy_auth.users_file``;
- ``whois USER``: the groups the configured directory (and default group) give a user.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from promptfence.cli import add_config_option
from promptfence.config import load_config
from promptfence.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="identity_command", required=True, metavar="ACTION")
    hp = sub.add_parser("hash-password", help="print a users-file line (scrypt) for a user")
    hp.add_argument("user")
    who = sub.add_parser("whois", help="the groups the directory gives a user")
    who.add_argument("user")
    add_config_option(who)


def run(args: argparse.Namespace) -> int:
    if args.identity_command == "hash-password":
        from proxy.identity import hash_password

        if ":" in args.user:
            raise ConfigError("a user name cannot contain ':' (HTTP Basic authentication forbids it)")
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                raise ConfigError("the passwords differ")
        else:
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("empty password")
        print(f"{args.user}:{hash_password(password)}")
        return 0
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
