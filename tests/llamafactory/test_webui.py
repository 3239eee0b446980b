"""LLaMA Board with the SafeNeuron stage, driven in a real headless Chromium through Playwright.

Opens `safeneuron-llamafactory webui`, picks "DPO + SafeNeuron", sets options, previews the
command, saves a screenshot under test-artifacts/llamafactory/, then starts a tiny training from
the UI and waits for it to finish with the mask written.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from lfhelpers import ARTIFACTS, offline_env

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """`safeneuron-llamafactory webui` on a free loopback port, in its own working directory."""
    workdir = tmp_path_factory.mktemp("webui")
    port = _free_port()
    env = offline_env(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                      BROWSER="true")  # `inbrowser=True` must not open a browser of its own
    log = open(workdir / "webui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "safeneuron_plugins.integrations.llamafactory", "webui"],
                            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("web UI did not start:\n" + (workdir / "webui.log").read_text()[-4000:])
            time.sleep(1)
    yield url, workdir
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(webui):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(30_000)
        # Requests the page has sent and not yet seen answered (see _settle); Gradio's heartbeat
        # stays open for the page's life and is not an answer to anything.
        page.in_flight = in_flight = set()
        page.on("request", lambda request: "/heartbeat/" in request.url or in_flight.add(request))
        page.on("requestfinished", lambda request: in_flight.discard(request))
        page.on("requestfailed", lambda request: in_flight.discard(request))
        page.goto(webui[0], wait_until="domcontentloaded")
        page.get_by_label("Stage").first.wait_for()
        yield page
        browser.close()


def _settle(page, quiet_ms: int = 300, timeout_s: float = 30) -> None:
    """Wait until the page has had no request in flight for `quiet_ms`.

    LLaMA Board answers a change with server events that rewrite other fields (choosing a model
    name resets the model path and template, choosing a stage clears the dataset). Filling the next
    field before those answers arrive loses the value on a slow machine, so every step waits here.
    """
    deadline = time.monotonic() + timeout_s
    quiet = 0
    while quiet < quiet_ms:
        page.wait_for_timeout(50)  # also lets Playwright deliver the request events
        quiet = 0 if page.in_flight else quiet + 50
        if time.monotonic() > deadline:
            pending = ", ".join(sorted(r.url for r in page.in_flight))
            raise AssertionError(f"the web UI kept requests open for {timeout_s} s: {pending}")


def _field(page, label: str):
    """The input of LLaMA Board's field with this label (the Train tab's, which comes first)."""
    title = page.locator(f'span[data-testid="block-info"]:text-is("{label}")').first
    block = title.locator('xpath=ancestor::*[contains(concat(" ", @class, " "), " block ")][1]')
    return block.locator("textarea, input").first


def _fill(page, label: str, text: str) -> None:
    box = _field(page, label)
    box.fill(text)
    box.blur()
    _settle(page)


def _choose(page, label: str, option: str) -> None:
    box = _field(page, label)
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).first.click()
    _settle(page)


def test_preview_shows_the_safeneuron_stage_and_options(page, tiny_model_dir, dataset_dir):
    _choose(page, "Model name", "Custom")
    _fill(page, "Model path", str(tiny_model_dir))
    _choose(page, "Finetuning method", "full")
    _choose(page, "Chat template", "chatml")
    _choose(page, "Stage", "DPO + SafeNeuron")
    _fill(page, "Data dir", str(dataset_dir))
    _choose(page, "Dataset", "safeneuron_pref")
    _choose(page, "Compute type", "fp32")
    page.locator("#safeneuron_neuron_ratio textarea, #safeneuron_neuron_ratio input").first.fill("0.1")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui_stage.png"))  # the top of the Train tab (docs/img)
    page.get_by_text("More SafeNeuron options").click()
    page.locator("#safeneuron_max_prompts textarea, #safeneuron_max_prompts input").first.fill("16")
    page.get_by_text("Extra configurations", exact=True).first.click()
    _fill(page, "Extra arguments", json.dumps(
        {"optim": "adamw_torch", "max_steps": 2, "gradient_accumulation_steps": 1,
         "preprocessing_num_workers": 1, "save_steps": 1000, "report_to": "none", "cutoff_len": 64}))
    # Stage "DPO + SafeNeuron" ticks safeneuron_freeze.
    assert page.locator("#safeneuron_freeze input[type=checkbox]").is_checked()
    # Nothing typed above was overwritten by a late answer from the server.
    for label, value in (("Model path", str(tiny_model_dir)), ("Chat template", "chatml"),
                         ("Data dir", str(dataset_dir))):
        assert _field(page, label).input_value() == value, f"{label} lost its value"
    page.get_by_text("safeneuron_pref", exact=True).first.wait_for()  # still the chosen dataset

    page.get_by_role("button", name="Preview command").click()
    command = page.get_by_text("safeneuron-llamafactory train")
    command.wait_for()
    text = command.inner_text()
    for expected in ("--stage safeneuron_dpo", "--safeneuron_freeze True", "--safeneuron_neuron_ratio 0.1",
                     "--safeneuron_max_prompts 16", "--pref_beta"):
        assert expected in text, f"{expected!r} not in the previewed command:\n{text}"
    assert "safeneuron_tau_es" not in text  # options left at their defaults are not repeated
    page.screenshot(path=str(ARTIFACTS / "webui_preview.png"), full_page=True)


def test_bad_option_is_reported_in_the_ui(page):
    box = page.locator("#safeneuron_neuron_ratio textarea, #safeneuron_neuron_ratio input").first
    box.fill("1.5")
    page.get_by_role("button", name="Preview command").click()
    error = page.get_by_text("safeneuron_neuron_ratio` is 1.5").first
    error.wait_for()
    # the message names the range and what the option does, and no command with the bad value is shown
    message = error.inner_text()
    assert "outside its range" in message and "Select the top fraction" in message, message
    assert page.get_by_text("--safeneuron_neuron_ratio 1.5").count() == 0
    box.fill("0.1")


def test_start_runs_safeneuron_dpo_through_our_entry_point(page, webui):
    workdir = webui[1]
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("Finished.").first.wait_for(timeout=240_000)
    masks = list((workdir / "saves").glob("Custom/full/*/safeneuron_mask.safetensors"))
    assert masks, "training from the UI wrote no mask:\n" + (workdir / "webui.log").read_text()[-4000:]
    run_dir = masks[0].parent
    assert (run_dir / "model.safetensors").is_file()
    args = (run_dir / "training_args.yaml").read_text()
    assert "stage: safeneuron_dpo" in args and "safeneuron_neuron_ratio: 0.1" in args
    page.screenshot(path=str(ARTIFACTS / "webui_finished.png"), full_page=True)
    shutil.copy(run_dir / "training_args.yaml", ARTIFACTS / "webui_training_args.yaml")
