"""`pysteer serve`'s app against a real uvicorn server on 127.0.0.1, driven by the `openai` client.

The model is a tiny random Llama with SmolLM2's tokenizer and chat template; the engine
decodes greedily with no end-of-sequence, so every answer can be compared with the same
request through ``Steering.generate`` on an identical copy of the model (decoded to text).
"""

import asyncio
import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the server needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="the server needs the serve extra (fastapi, uvicorn)")
openai = pytest.importorskip("openai", reason="the server tests drive it with the openai client")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from transformers import GenerationConfig  # noqa: E402
from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: E402

import pysteer  # noqa: E402
from pysteer.serving import SteeredEngine  # noqa: E402
from pysteer.serving.server import ServerLimits, build_app  # noqa: E402
from model_zoo import WIDTH, tiny_chat_model  # noqa: E402
from test_continuous import mixed_specs, reference  # noqa: E402

MODEL = "tiny-llama"


class Served:
    """A real server in a thread, and an identical unsteered model to compute references."""

    def __init__(self, specs, max_batch_tokens=64):
        self.model, self.tokenizer = tiny_chat_model()
        self.oracle, _ = tiny_chat_model()
        self.specs = dict(specs)
        generation = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1,
                                      pad_token_id=self.tokenizer.pad_token_id)
        batching = ContinuousBatchingConfig(num_blocks=128, page_size=16, max_batch_tokens=max_batch_tokens)
        self.engine = SteeredEngine(self.model, specs, generation_config=generation, cb_config=batching, spare_rows=4)
        app = build_app(self.engine, self.tokenizer, MODEL, ServerLimits(8, 64, 256))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=60))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def client(self):
        return openai.OpenAI(base_url=self.url, api_key="none", max_retries=0)

    def chat_ids(self, content):
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def expected_text(self, ids, steering, new_tokens, specs=None):
        tokens = reference(self.oracle, specs or self.specs, ids, steering, new_tokens)
        return self.tokenizer.decode([t for t in tokens if t != self.tokenizer.eos_token_id],
                                     skip_special_tokens=True)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def served():
    s = Served(mixed_specs())
    yield s
    s.close()


def test_chat_and_completion_streaming_and_not_equal_steering_generate(served):
    client = served.client()
    steering = {"spec": "all", "row": 2}
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=6, extra_body={"steering": steering})
    expected = served.expected_text(served.chat_ids("Say hi."), steering, 6)
    assert chat.choices[0].message.content == expected and chat.choices[0].finish_reason == "length"
    assert chat.usage.completion_tokens == 6
    unsteered = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                               max_tokens=6)
    assert unsteered.choices[0].message.content == served.expected_text(served.chat_ids("Say hi."), None, 6)
    assert unsteered.choices[0].message.content != expected  # the steering acted
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6, stream=True,
        extra_body={"steering": steering})]
    assert "".join(pieces) == expected and len(pieces) > 2
    ids = served.tokenizer("Once upon a time")["input_ids"]
    for prompt in ("Once upon a time", ids):
        text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5,
                                         extra_body={"steering": {"spec": "prompt", "row": 1, "scale": 2.0}})
        assert text.choices[0].text == served.expected_text(ids, {"spec": "prompt", "row": 1, "scale": 2.0}, 5)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True, extra_body={"steering": "generated"}))
    assert streamed == served.expected_text(ids, "generated", 5)
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_64_concurrent_mixed_requests_all_complete_equal_to_solo_while_hostile_ones_get_4xx(served, tmp_path):
    steerings = [None, {"spec": "all", "row": 0}, {"spec": "all", "row": 1, "scale": 0.5}, "prompt",
                 {"spec": "prompt", "row": 1}, {"spec": "generated", "row": 1}, {"spec": "all", "row": 2},
                 {"spec": "generated", "row": 0, "scale": 1.5}]
    questions = ["Name a fruit.", "What is 2+2?", "Hello!", "Tell me a joke about cats and dogs, please."]
    jobs = [(questions[i % 4], steerings[(i // 4) % 8], 3 + i % 4) for i in range(64)]
    other = pysteer.SteeringSpec([pysteer.DenseIntervention(1, torch.ones(WIDTH + 2) / 7, [[1.0]], "add")])
    other.save(tmp_path / "other")
    base = served.url

    hostile = [  # (method, path, raw body, expected status, message fragment)
        ("post", "/chat/completions", b"{not json", 400, "not valid JSON"),
        ("post", "/chat/completions", b"[1, 2]", 400, "JSON object"),
        ("post", "/chat/completions", json.dumps({"messages": "hi"}).encode(), 400, "messages"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "content"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                                  "steering": {"spec": "nope"}}).encode(), 404, "unknown steering spec"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                                  "steering": {"spec": "all", "row": 3}}).encode(), 400, "out of range"),
        ("post", "/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], '
                                      b'"steering": {"spec": "all", "scale": NaN}}', 400, "finite"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                                  "steering": {"spec": "all", "row": "0"}}).encode(), 400, "integer"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                                  "steering": 7}).encode(), 400, "spec name or an object"),
        ("post", "/chat/completions", json.dumps({"messages": [{"role": "user", "content": "x"}],
                                                  "max_tokens": 10 ** 9}).encode(), 400, "max_tokens"),
        ("post", "/completions", json.dumps({"prompt": [5, 10 ** 9]}).encode(), 400, "token ids"),
        ("post", "/completions", json.dumps({"prompt": [5] * 300}).encode(), 400, "the limit is 256"),
        ("post", "/completions", json.dumps({"prompt": {"a": 1}}).encode(), 400, "prompt must be"),
        ("post", "/steering", json.dumps({"name": "other", "path": str(tmp_path / "other")}).encode(), 400, "d_model"),
        ("post", "/steering", json.dumps({"name": "x", "path": str(tmp_path / "missing")}).encode(), 400, "cannot load"),
        ("delete", "/steering/never-added", None, 404, "no spec is named"),
    ]

    async def good(client, question, steering, n):
        extra = {} if steering is None else {"extra_body": {"steering": steering}}
        reply = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": question}],
                                                     max_tokens=n, **extra)
        return reply.choices[0].message.content

    async def bad(http, method, path, body, status, fragment):
        await asyncio.sleep(0.05)  # land while the good ones are in flight
        response = await http.request(method.upper(), base + path, content=body,
                                      headers={"content-type": "application/json"})
        return response.status_code, response.text, status, fragment

    async def main():
        client = openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0, timeout=120)
        async with httpx.AsyncClient(timeout=60) as http:
            results = await asyncio.gather(*[good(client, *job) for job in jobs],
                                           *[bad(http, *h) for h in hostile])
        await client.close()
        return results[:len(jobs)], results[len(jobs):]

    answers, refusals = asyncio.run(main())
    for got_status, text, status, fragment in refusals:
        assert got_status == status and fragment in json.loads(text)["error"]["message"], (got_status, text)
    solo = {}
    for (question, steering, n), answer in zip(jobs, answers):
        key = (question, json.dumps(steering), n)
        if key not in solo:
            solo[key] = served.expected_text(served.chat_ids(question), steering, n)
        assert answer == solo[key], (question, steering)
    assert len(answers) == 64 and served.engine.steering.in_flight() == 0
    assert set(served.engine.steering.specs()) == {"all", "prompt", "generated"}  # the hostile add changed nothing


def test_specs_added_and_removed_over_http_while_running(served, tmp_path):
    late = mixed_specs()["prompt"].with_coefficients([-2.0 * mixed_specs()["prompt"].interventions[0].coefficients])
    late.save(tmp_path / "late")
    with httpx.Client(base_url=served.url, timeout=60) as http:
        added = http.post("/steering", json={"name": "late", "path": str(tmp_path / "late")})
        assert added.status_code == 200, added.text
        assert http.post("/steering", json={"name": "all", "path": str(tmp_path / "late")}).status_code == 409
        assert "late" in http.get("/steering").json()["specs"]
        reply = served.client().chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
            extra_body={"steering": {"spec": "late", "row": 1}})
        assert reply.choices[0].message.content == served.expected_text(
            served.chat_ids("Hi"), {"spec": "late", "row": 1}, 5, specs={"late": late})
        assert http.delete("/steering/late").status_code == 200
        gone = http.post("/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                    "steering": "late"})
        assert gone.status_code == 404 and "unknown steering spec 'late'" in gone.json()["error"]["message"]


def test_shutdown_drains_the_requests_in_flight():
    served = Served(mixed_specs())
    seen = []

    def stream():
        for chunk in served.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Count."}], max_tokens=40, stream=True,
                extra_body={"steering": {"spec": "all", "row": 1}}):
            seen.append(chunk.choices[0].delta.content or "")
            if len(seen) == 2:
                served.server.should_exit = True  # shut down with this request mid-flight
    worker = threading.Thread(target=stream)
    worker.start()
    worker.join(timeout=120)
    served.thread.join(timeout=60)
    assert not worker.is_alive() and not served.thread.is_alive()
    assert "".join(seen) == served.expected_text(served.chat_ids("Count."), {"spec": "all", "row": 1}, 40)
    assert not served.engine.manager.is_running()
