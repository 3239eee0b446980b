"""LLaMA Board with a "DPO + SafeNeuron" training stage: a runtime extension, nothing patched on disk.

:func:`install` extends LLaMA-Factory's web UI in this process only:

- ``extras.constants.TRAINING_STAGES`` (the one dict shared by its components, control and runner)
  gets the stage ``"DPO + SafeNeuron" -> "safeneuron_dpo"``, a pairwise-data stage;
- the Train tab gets a "SafeNeuron" panel whose fields are generated from
  :class:`~safeneuron_plugins.options.SafeNeuronOptions` (type, choices, default, help text);
- the runner writes the options that differ from their defaults into the training args (so the
  command preview shows them), validates them before preview/start, and starts training through
  our entry point (``python -m safeneuron_plugins.integrations.llamafactory train``) instead of
  ``llamafactory-cli train``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from safeneuron_plugins.errors import SafeNeuronError
from safeneuron_plugins.options import option_choices, option_fields, option_type

from .args import SAFENEURON_STAGE, prepare_train_args
from .compat import ensure_torchaudio_importable, warn_if_untested_version

STAGE_LABEL = "DPO + SafeNeuron"
ENTRY_POINT = [sys.executable, "-m", "safeneuron_plugins.integrations.llamafactory"]

# Shown first; the other options go in a closed "More" section. Layout only: every field, its type,
# default and help text come from the options schema.
PRIMARY = ("safeneuron_freeze", "safeneuron_mask", "safeneuron_harmful", "safeneuron_harmless",
           "safeneuron_method", "safeneuron_neuron_ratio", "safeneuron_tau_es", "safeneuron_tau_sas")


def _component(field) -> Any:
    import gradio as gr

    name, default, help_text = field.name, field.default, field.metadata["help"]
    common = dict(label=name, info=help_text, elem_id=name, interactive=True)
    choices = option_choices(name)
    kind = option_type(name)
    if choices:
        return gr.Dropdown(choices=list(choices), value=default, **common)
    if kind is bool:
        return gr.Checkbox(value=default, **common)
    if kind in (int, float) and default is not None:
        return gr.Number(value=default, precision=0 if kind is int else None, **common)
    # Optional values (numbers included): an empty box means unset.
    return gr.Textbox(value=default if default is not None else "", placeholder="unset", **common)


def _ui_value(name: str, value: Any) -> Any:
    """A UI value in the schema's terms: an empty box means unset (None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    kind = option_type(name)
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = float(value)
            if kind is int:
                return int(number) if number.is_integer() else value
            return number
        except (TypeError, ValueError):
            return value  # the options schema reports it, naming the key
    return value


def options_from_ui(values: dict[str, Any], stage: str) -> dict[str, Any]:
    """The ``safeneuron_*`` args for a UI state: none unless freezing is on or the stage implies it."""
    if stage != SAFENEURON_STAGE and not values.get("safeneuron_freeze"):
        return {}
    out: dict[str, Any] = {}
    for field in option_fields():
        value = _ui_value(field.name, values.get(field.name, field.default))
        if value != field.default or field.name == "safeneuron_freeze":
            out[field.name] = value
    if stage == SAFENEURON_STAGE and out.get("safeneuron_freeze") is False:
        out.pop("safeneuron_freeze")  # the stage itself means freezing; don't show a contradiction
    return out


def _make_runner_class(base: type) -> type:
    from llamafactory.extras.constants import TRAINING_STAGES

    class SafeNeuronRunner(base):
        """LLaMA Board's runner, plus the SafeNeuron options and our training entry point."""

        def _safeneuron_values(self, data: dict) -> dict[str, Any]:
            return {f.name: data[self.manager.get_elem_by_id(f"train.{f.name}")]
                    for f in option_fields()
                    if self.manager.get_elem_by_id(f"train.{f.name}") in data}

        def _parse_train_args(self, data: dict) -> dict[str, Any]:
            args = super()._parse_train_args(data)
            if args["stage"] == SAFENEURON_STAGE:  # the DPO settings LLaMA Board sets for stage dpo
                get = lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]
                args.update(pref_beta=get("train.pref_beta"), pref_ftx=get("train.pref_ftx"),
                            pref_loss=get("train.pref_loss"))
            args.update(options_from_ui(self._safeneuron_values(data), args["stage"]))
            return args

        def _initialize(self, data: dict, do_train: bool, from_preview: bool) -> str:
            error = super()._initialize(data, do_train, from_preview)
            if error or not do_train:
                return error
            stage = TRAINING_STAGES[data[self.manager.get_elem_by_id("train.training_stage")]]
            try:
                prepare_train_args({"stage": stage, **options_from_ui(self._safeneuron_values(data), stage)},
                                   source="the SafeNeuron panel")
            except SafeNeuronError as err:
                return str(err)
            return ""

        def _preview(self, data: dict, do_train: bool):
            for update in super()._preview(data, do_train):
                yield {elem: (text.replace("llamafactory-cli train", "safeneuron-llamafactory train", 1)
                              if do_train and isinstance(text, str) else text)
                       for elem, text in update.items()}

    return SafeNeuronRunner


def _popen_through_entry_point(popen):
    """Wrap ``Popen`` as seen by LLaMA Board's runner: ``llamafactory-cli train`` runs our entry point."""

    def start(cmd, *args, **kwargs):
        if isinstance(cmd, list) and cmd[:2] == ["llamafactory-cli", "train"]:
            cmd = [*ENTRY_POINT, *cmd[1:]]
        return popen(cmd, *args, **kwargs)

    start.__safeneuron_wrapped__ = popen
    return start


def _extend_train_tab(create_train_tab):
    import gradio as gr

    def create(engine):
        from llamafactory.webui import runner as runner_module

        if not isinstance(engine.runner, runner_module.SafeNeuronRunner):
            engine.runner = runner_module.SafeNeuronRunner(engine.manager, engine.demo_mode)

        with gr.Accordion("SafeNeuron: freeze the safety neurons during DPO", open=True,
                          elem_id="safeneuron_panel"):
            ours = {}
            fields = {f.name: f for f in option_fields()}
            with gr.Row():
                for name in PRIMARY[:4]:
                    ours[name] = _component(fields[name])
            with gr.Row():
                for name in PRIMARY[4:]:
                    ours[name] = _component(fields[name])
            with gr.Accordion("More SafeNeuron options", open=False):
                rest = [n for n in fields if n not in PRIMARY]
                for start in range(0, len(rest), 4):
                    with gr.Row():
                        for name in rest[start:start + 4]:
                            ours[name] = _component(fields[name])

        # LLaMA Board wires its buttons to the set returned by manager.get_base_elems(): include ours
        # while the Train tab is built, so preview, start, save and load all carry them.
        base_elems = engine.manager.get_base_elems
        engine.manager.get_base_elems = lambda: base_elems() | set(ours.values())
        try:
            elems = create_train_tab(engine)
        finally:
            del engine.manager.get_base_elems

        stage = elems["training_stage"]
        stage.change(lambda label: gr.Checkbox(value=True) if label == STAGE_LABEL else gr.Checkbox(),
                     [stage], [ours["safeneuron_freeze"]], queue=False)
        return {**elems, **ours}

    create.__safeneuron_wrapped__ = create_train_tab
    return create


def install() -> None:
    """Extend LLaMA Board in this process (idempotent)."""
    warn_if_untested_version()
    ensure_torchaudio_importable()
    from llamafactory.extras import constants
    from llamafactory.webui import interface
    from llamafactory.webui import runner as runner_module

    if STAGE_LABEL not in constants.TRAINING_STAGES:
        items = list(constants.TRAINING_STAGES.items())
        position = next((i + 1 for i, (_, v) in enumerate(items) if v == "dpo"), len(items))
        items.insert(position, (STAGE_LABEL, SAFENEURON_STAGE))
        constants.TRAINING_STAGES.clear()  # the same dict object everywhere it was imported
        constants.TRAINING_STAGES.update(items)
    constants.STAGES_USE_PAIR_DATA.add(SAFENEURON_STAGE)

    if not hasattr(runner_module, "SafeNeuronRunner"):
        runner_module.SafeNeuronRunner = _make_runner_class(runner_module.Runner)
    if not hasattr(runner_module.Popen, "__safeneuron_wrapped__"):
        runner_module.Popen = _popen_through_entry_point(runner_module.Popen)
    if not hasattr(interface.create_train_tab, "__safeneuron_wrapped__"):
        interface.create_train_tab = _extend_train_tab(interface.create_train_tab)


def create_ui(demo_mode: bool = False):
    """LLaMA Board's ``create_ui`` with the SafeNeuron extension installed."""
    install()
    from llamafactory.webui.interface import create_ui as lf_create_ui

    return lf_create_ui(demo_mode=demo_mode)


def run_web_ui() -> None:
    """As ``llamafactory-cli webui`` (GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, GRADIO_SHARE, GRADIO_IPV6)."""
    install()
    from llamafactory.extras.misc import fix_proxy, is_env_enabled

    gradio_ipv6 = is_env_enabled("GRADIO_IPV6")
    server_name = os.getenv("GRADIO_SERVER_NAME", "[::]" if gradio_ipv6 else "0.0.0.0")
    print("Visit http://ip:port for Web UI, e.g., http://127.0.0.1:7860")
    fix_proxy(ipv6_enabled=gradio_ipv6)
    create_ui().queue().launch(share=is_env_enabled("GRADIO_SHARE"), server_name=server_name,
                               inbrowser=True)
