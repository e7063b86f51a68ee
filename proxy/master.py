"""The mitmproxy master PromptFence runs: mitmdump's DumpMaster, no flow dumper, our addons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from proxy.addon import PromptFenceAddon


def build_dump_master(
    addon: PromptFenceAddon,
    *,
    listen_host: str,
    listen_port: int,
    confdir: Path,
    settings: Mapping[str, object],
    extra_addons: Sequence[object] = (),
) -> DumpMaster:
    """The dumper (which prints every flow) is left out: URLs of GenAI apps can carry prompts.
    ``extra_addons`` (e.g. the WebSocket guard) are added after ``addon``, in order."""
    opts = options.Options(listen_host=listen_host, listen_port=listen_port, confdir=str(confdir))
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(addon, *extra_addons)  # type: ignore[no-untyped-call]
    master.options.update(**settings)  # type: ignore[no-untyped-call]
    return master
