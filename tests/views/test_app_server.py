"""The explorer's server (captum_decompx.app.build_app / serve) through its API, with gradio_client.

Needs the [app] extra (Gradio); skipped without it. The served values are compared with DecompX
called directly on the same model.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

gr = pytest.importorskip("gradio", reason="the explorer needs the [app] extra: pip install -e '.[app]'")
client_module = pytest.importorskip("gradio_client", reason="the explorer's API tests need gradio_client (with the [app] extra)")

from support.classifiers import make_word_tokenizer  # noqa: E402
from support.explorer import SENTENCE, WORDS  # noqa: E402
from support.literal_models import bert as literal_ready_bert  # noqa: E402
from support.word_level import tiny_gpt2  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.app import build_app, launch_options  # noqa: E402
from captum_decompx.cli import build_parser  # noqa: E402

CONCURRENT_REQUESTS = 8


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launched(app):
    app.queue(default_concurrency_limit=1)
    app.launch(prevent_thread_lock=True, quiet=True, **launch_options(port=free_port()))
    return app


@pytest.fixture(scope="module")
def model():
    return literal_ready_bert(seed=3)


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    app = launched(build_app(model, tokenizer, source="tiny-bert"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def client(server):
    return client_module.Client(server.local_url, verbose=False)


def library_values(model, tokenizer, text):
    """DecompX called directly: contributions (classes, seq), logits, bias."""
    batch = tokenizer(text, return_tensors="pt")
    forward = lambda ids, mask, types: model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # noqa: E731
    output = DecompX(forward, model=model).decompose(batch["input_ids"], (batch["attention_mask"], batch["token_type_ids"]))
    return output.attributions[0].T, output.logits[0], output.bias[0]


def test_eight_concurrent_requests_all_complete_with_identical_values(client, server, model, tokenizer, capsys):
    def request(_):
        started = time.perf_counter()
        result = client.submit(SENTENCE, api_name="/explain").result(timeout=120)
        return result, time.perf_counter() - started

    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        answers = list(pool.map(request, range(CONCURRENT_REQUESTS)))
    results = [result for result, _ in answers]
    assert len(results) == CONCURRENT_REQUESTS and all(isinstance(r, dict) for r in results)  # none lost
    assert all(result == results[0] for result in results)  # identical values
    contributions, logits, bias = library_values(model, tokenizer, SENTENCE)
    torch.testing.assert_close(
        torch.tensor(results[0]["contributions"], dtype=torch.float64), contributions, rtol=1e-9, atol=1e-9
    )
    torch.testing.assert_close(torch.tensor(results[0]["logits"], dtype=torch.float64), logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.tensor(results[0]["bias"], dtype=torch.float64), bias, rtol=1e-9, atol=1e-9)
    assert results[0]["tokens"] == tokenizer.convert_ids_to_tokens(tokenizer(SENTENCE)["input_ids"])
    assert results[0]["prediction"] == results[0]["labels"][int(logits.argmax())]
    assert server.decompx_explorer.classifier.model is model  # one model copy: the caller's
    latencies = sorted(latency for _, latency in answers)
    p95 = latencies[math.ceil(0.95 * len(latencies)) - 1]  # nearest rank
    with capsys.disabled():
        print(
            f"\nexplorer API, {CONCURRENT_REQUESTS} concurrent /explain requests: p95 latency {p95:.3f} s, "
            f"median {latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s"
        )


def test_empty_text_gets_a_message_not_a_traceback(client):
    with pytest.raises(client_module.exceptions.AppError, match="The text is empty: type a sentence to explain.") as raised:
        client.predict("   ", api_name="/explain")
    assert "Traceback" not in str(raised.value)


def test_markup_comes_back_as_plain_token_text(client):
    result = client.predict("<img src=x onerror=alert(1)> a fine film", api_name="/explain")
    assert result["tokens"][:4] == ["[CLS]", "<", "img", "src"]


def test_binds_the_local_machine_only_and_sends_no_analytics(server):
    assert server.server_name == "127.0.0.1" and server.local_url.startswith("http://127.0.0.1:")
    assert server.analytics_enabled is False and os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert launch_options()["server_name"] == "127.0.0.1" and launch_options()["share"] is False
    arguments = build_parser().parse_args(["serve"])
    assert (arguments.host, arguments.port, arguments.model) == ("127.0.0.1", 7860, None)
    outside = [address for address in _own_addresses() if not address.startswith("127.")]
    if not outside:
        pytest.skip("this machine has no address besides the loopback one to try")
    with pytest.raises(OSError):
        socket.create_connection((outside[0], server.server_port), timeout=2).close()


def _own_addresses() -> list[str]:
    """This machine's addresses: the host name's, and the one its default route leaves from (a UDP
    socket's connect sends nothing)."""
    addresses = set()
    try:
        addresses.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            addresses.add(probe.getsockname()[0])
    except OSError:
        pass
    return sorted(addresses)


def test_causal_lm_app_serves_the_token_matrix(llm_tokenizer):
    model = tiny_gpt2()
    app = launched(build_app(model, llm_tokenizer, source="tiny-gpt2"))
    try:
        result = client_module.Client(app.local_url, verbose=False).predict("the cat sat on", api_name="/explain")
    finally:
        app.close()
    matrix = torch.tensor(result["matrix"], dtype=torch.float64)
    steps = len(result["generated_tokens"])
    assert result["prompt_tokens"] == ["the", "cat", "sat", "on"] and matrix.shape == (steps, 4 + steps)
    torch.testing.assert_close(
        matrix.sum(1) + torch.tensor(result["bias"]), torch.tensor(result["logits"], dtype=torch.float64), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_serve_command_serves_a_model_folder(model, tokenizer, tmp_path):
    folder = tmp_path / "tiny-bert"
    model.float().save_pretrained(folder)
    model.double()
    tokenizer.save_pretrained(folder)
    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "captum_decompx", "serve", "--model", str(folder), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    try:
        deadline = time.monotonic() + 120
        first_line = process.stdout.readline() if process.stdout else ""
        assert f"http://127.0.0.1:{port}" in first_line
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                time.sleep(0.5)
        result = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False).predict(SENTENCE, api_name="/explain")
        contributions = torch.tensor(result["contributions"])
        torch.testing.assert_close(
            contributions.sum(1) + torch.tensor(result["bias"]), torch.tensor(result["logits"]), rtol=1e-4, atol=1e-4
        )
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_causal_lm_folder_loads_as_a_causal_lm_and_a_classifier_folder_as_a_classifier(
    model, tokenizer, llm_tokenizer, tmp_path
):
    from captum_decompx.app import is_causal_lm, load_for_app

    tiny_gpt2().save_pretrained(tmp_path / "lm")
    llm_tokenizer.save_pretrained(tmp_path / "lm")
    loaded, _, source = load_for_app(str(tmp_path / "lm"))
    assert type(loaded).__name__ == "GPT2LMHeadModel" and is_causal_lm(loaded) and source == str(tmp_path / "lm")
    model.float().save_pretrained(tmp_path / "classifier")
    model.double()
    tokenizer.save_pretrained(tmp_path / "classifier")
    loaded, _, _ = load_for_app(str(tmp_path / "classifier"))
    assert type(loaded).__name__ == "BertForSequenceClassification" and not is_causal_lm(loaded)
