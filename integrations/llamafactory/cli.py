"""``safeneuron-llamafactory``: ``train`` and ``webui`` with SafeNeuron; other commands as ``llamafactory-cli``."""

from __future__ import annotations

import sys

from safeneuron_plugins.errors import SafeNeuronError

from .compat import ensure_torchaudio_importable

USAGE = """\
usage: safeneuron-llamafactory train CONFIG.yaml [key=value ...]
       safeneuron-llamafactory webui
       safeneuron-llamafactory {api,chat,export,webchat,env,version} ...   (as llamafactory-cli)

train   Same arguments as `llamafactory-cli train`. A config without safeneuron_* keys runs exactly
        as with llamafactory-cli. `stage: safeneuron_dpo` (or `stage: dpo` with
        `safeneuron_freeze: true`) runs DPO with the safety neurons frozen; any safeneuron_* option
        may be set (see docs/OPTIONS.md).
webui   LLaMA Board with a "DPO + SafeNeuron" training stage and the SafeNeuron options in the
        Train tab. Honours GRADIO_SERVER_NAME and GRADIO_SERVER_PORT.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "help"
    if command in ("help", "-h", "--help"):
        print(USAGE)
        return 0
    try:
        if command == "train":
            from .launcher import train

            return train(argv)
        if command == "webui":
            from .webui import run_web_ui

            run_web_ui()
            return 0
    except SafeNeuronError as err:
        print(f"safeneuron-llamafactory: error: {err}", file=sys.stderr)
        return 2

    # Anything else is LLaMA-Factory's own command, run in this environment.
    ensure_torchaudio_importable()
    from llamafactory import launcher

    sys.argv = [sys.argv[0], command, *argv]
    launcher.launch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
