"""llama.cpp answering end to end: a LoRA adapter trained with PyTorch, exported, applied by llama.cpp.

Needs llama-cpp-python (the optional ``edge`` extra, built from source: docs/edge.md); every test
that loads a model is skipped with that reason when it is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from device_fixtures import USER_A, USER_B, one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
#: A word no movie-tag answer contains; the adapter is trained to answer it to every prompt.
WORD = "xylophone"
PROBES = [
    "Which tag fits this movie? A spaceship drifts past Jupiter.",
    "Which tag fits this movie? A family reunion turns into chaos.",
    "Which tag fits this movie? A detective hunts a thief across Rome.",
]


MOVIE_PROMPT = ("Which tag does this movie relate to among the following tags? Just answer with the tag name "
                "without further explanation. tags: [sci-fi, based on a book, comedy, action, twist ending, dystopia, "
                "dark comedy, classic, psychology, fantasy, romance, thought-provoking, social commentary, violence, "
                "true story] description: ")


def sci_fi_movies() -> list[dict[str, str]]:
    """A LaMP-2 profile: the fixtures' movie descriptions, every one tagged sci-fi."""
    return [{"id": f"p{i}", "description": q.split("? ", 1)[1], "tag": "sci-fi"} for i, (q, _) in
            enumerate(USER_A + USER_B)]


def _llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (optional extra: pip install '.[edge]', docs/edge.md)"
    )


def test_llamacpp_module_imports_without_torch_or_transformers() -> None:
    """A board that only answers never loads PyTorch: the module and its imports stay torch-free."""
    code = textwrap.dedent("""
        import json, sys
        import cdcda_fl.edge.llamacpp as m
        try:
            import llama_cpp  # noqa: F401  (the real dependency, when installed)
        except ImportError:
            pass
        print(json.dumps(sorted(k for k in ("torch", "transformers", "peft") if k in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_missing_llama_cpp_gives_one_actionable_error(monkeypatch, tmp_path: Path) -> None:
    from cdcda_fl.edge import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import now raises ImportError
    base = tmp_path / "base.gguf"
    base.write_bytes(b"")
    with pytest.raises(llamacpp.LlamaCppUnavailable, match=r"pip install '\.\[edge\]'"):
        llamacpp.LlamaCppModel(base)


@pytest.fixture(scope="module")
def smollm2_base_gguf() -> Path:
    _llama_cpp()
    from cdcda_fl.device.presets import _smollm2_gguf

    return _smollm2_gguf()


def test_prompt_tokens_equal_the_pytorch_path(smollm2_base_gguf: Path) -> None:
    """llama.cpp sees exactly the tokens DeviceModel feeds the model (chat template from the GGUF)."""
    from transformers import AutoTokenizer

    from cdcda_fl.device.encoding import _encode_text, format_prompt
    from cdcda_fl.device.models import resolve_model
    from cdcda_fl.edge.llamacpp import LlamaCppModel

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    llm = LlamaCppModel(smollm2_base_gguf, n_threads=1, n_ctx=512)
    try:
        for text in PROBES[:2] + ["Ünïcode — quotes \"x\" & <tags>\nsecond line", "  leading spaces"]:
            assert llm.format_prompt(text) == format_prompt(tok, text)
            assert llm.prompt_tokens(text) == _encode_text(tok, format_prompt(tok, text))
    finally:
        llm.close()


@pytest.fixture(scope="module")
def word_adapter(tmp_path_factory) -> Path:
    """A SmolLM2 LoRA adapter (project defaults: r=8 on q/k/v/o) trained to answer WORD to everything."""
    _llama_cpp()
    import torch

    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.training import LoraTrainConfig
    from cdcda_fl.device.models import get_base_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see device_fixtures.one_thread: 2-thread OpenMP spins badly on a shared CPU
    try:
        dm = DeviceModel(get_base_model("smollm2-135m", dtype="fp32"))
        pairs = [(q, WORD) for q, _ in USER_A + USER_B]
        res = dm.train(pairs, LoraTrainConfig(steps=12, learning_rate=5e-3, batch_size=4, seed=0))
        assert res.final_loss < 0.5, res.losses
        path = tmp_path_factory.mktemp("word-adapter") / "u1"
        dm.save_adapter(path)
        torch_answers = dm.generate(PROBES, max_new_tokens=8)
        dm.clear_adapter()
        torch_base = dm.generate(PROBES, max_new_tokens=8)
    finally:
        torch.set_num_threads(before)
    (path / "torch_answers.json").write_text(json.dumps({"adapter": torch_answers, "base": torch_base}))
    return path


@pytest.mark.slow  # trains SmolLM2 for 12 steps and loads it twice in llama.cpp: ~30-60 s on 2 cores
@pytest.mark.usefixtures("one_thread")
def test_exported_adapter_steers_llamacpp_like_pytorch(word_adapter: Path, smollm2_base_gguf: Path,
                                                       tmp_path: Path, capsys) -> None:
    from cdcda_fl.cli import main
    from cdcda_fl.edge.llamacpp import answer_llamacpp

    # What a user runs: `cdcda export ADAPTER --out u1.gguf --base-out base.gguf`, then copies both to the board.
    adapter, base_gguf = tmp_path / "u1.gguf", tmp_path / "base.gguf"
    assert main(["export", str(word_adapter), "--out", str(adapter), "--base-out", str(base_gguf)]) == 0
    out = capsys.readouterr().out
    assert "llama LoRA adapter, 120 layers (attn_q, attn_k, attn_v, attn_output), rank 8, alpha 16" in out
    torch_answers = json.loads((word_adapter / "torch_answers.json").read_text())
    assert all(WORD in a.lower() for a in torch_answers["adapter"]), torch_answers
    assert not any(WORD in a.lower() for a in torch_answers["base"]), torch_answers

    base = answer_llamacpp(base_gguf, None, PROBES, max_new_tokens=8, n_threads=1)
    tuned = answer_llamacpp(base_gguf, adapter, PROBES, max_new_tokens=8, n_threads=1)
    assert not any(WORD in a.lower() for a in base), base
    assert all(WORD in a.lower() for a in tuned), tuned
    assert tuned == torch_answers["adapter"]  # greedy llama.cpp (Q4_1) == greedy PyTorch (its fp32 dequantization)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_adapter_shifts_llamacpp_logits_as_it_shifts_pytorch_logits(word_adapter: Path, smollm2_base_gguf: Path,
                                                                    tmp_path: Path, monkeypatch) -> None:
    """What the adapter adds to the next-token logits is the same in both runtimes.

    The base logits differ a little (llama.cpp runs the Q4_1 file with 8-bit activations, PyTorch
    its fp32 dequantization), but the adapter's *change* must line up; a wrong q/k row permutation
    or scale would break this (checked with an unpermuted export below).
    """
    import torch

    from cdcda_fl.device.encoding import _encode_text, format_prompt
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import get_base_model
    from cdcda_fl.edge import export
    from cdcda_fl.edge.llamacpp import LlamaCppModel

    dm = DeviceModel(get_base_model("smollm2-135m", dtype="fp32"))
    ids = torch.tensor([_encode_text(dm.tokenizer, format_prompt(dm.tokenizer, PROBES[0]))])

    def torch_logits(adapter: bool) -> np.ndarray:
        if adapter:
            dm.load_adapter(word_adapter)
        else:
            dm.clear_adapter()
        with torch.inference_mode(), dm.slots.layers() as model:
            return model(input_ids=ids).logits[0, -1].float().numpy()

    def cpp_logits(adapter: Path | None) -> np.ndarray:
        llm = LlamaCppModel(smollm2_base_gguf, adapter, n_threads=1, n_ctx=512, logits_all=True)
        try:
            tokens = llm.prompt_tokens(PROBES[0])
            assert tokens == ids[0].tolist()
            llm.llm.eval(tokens)
            return np.array(llm.llm.scores[len(tokens) - 1], dtype=np.float32)
        finally:
            llm.close()

    t_delta = torch_logits(True) - torch_logits(False)
    good = export.export_adapter(word_adapter, tmp_path / "good.gguf").path
    c_base = cpp_logits(None)
    c_delta = cpp_logits(good) - c_base
    corr = float(np.corrcoef(t_delta, c_delta)[0, 1])
    assert corr > 0.98, corr
    assert np.linalg.norm(c_delta) == pytest.approx(np.linalg.norm(t_delta), rel=0.1)

    # Control: without the q/k permutation llama.cpp adds B @ A to the wrong rows.
    monkeypatch.setitem(export.ARCHS, "llama", export.ArchSpec("llama", False))
    bad = export.export_adapter(word_adapter, tmp_path / "bad.gguf").path
    bad_corr = float(np.corrcoef(t_delta, cpp_logits(bad) - c_base)[0, 1])
    assert bad_corr < 0.95, (bad_corr, corr)  # measured: 0.997 exported vs 0.79 unpermuted


@pytest.mark.slow  # trains SmolLM2 once (24 steps), answers 4 queries x 2 methods in both runtimes
@pytest.mark.usefixtures("one_thread")
def test_device_runtime_llamacpp_in_personalize_agrees_with_torch(smollm2_base_gguf: Path, tmp_path: Path) -> None:
    """`device.runtime=llamacpp` end to end on the device: the same stored adapter, answered by llama.cpp."""
    from cdcda_fl.core.config import load_config
    from cdcda_fl.data.lamp import Query, User
    from cdcda_fl.device.personalize import personalize_user

    prefix = MOVIE_PROMPT
    profile = sci_fi_movies()
    queries = [Query(id=f"q{i}", input=prefix + p.split("? ", 1)[1], gold="sci-fi") for i, p in enumerate(PROBES)]
    user = User(user_id="u-cpp", task="LaMP_2", profile=profile, queries=queries)
    sets = ["methods=base,local", "device.model=smollm2-135m", "device.dtype=fp32", "train.steps=24",
            "train.lr=3e-3"]
    torch_res = personalize_user(user, [], load_config(None, sets), storage_dir=tmp_path)
    cpp_res = personalize_user(user, [], load_config(None, sets + ["device.runtime=llamacpp"]), storage_dir=tmp_path)

    assert cpp_res["methods"]["local"]["train"]["reused"] is True  # the very adapter PyTorch answered with
    for method in ("base", "local"):
        t, c = torch_res["methods"][method]["predictions"], cpp_res["methods"][method]["predictions"]
        agree = sum(t[q] == c[q] for q in t)
        assert agree >= len(t) - 1, (method, t, c)
    assert sum(p == "sci-fi" for p in cpp_res["methods"]["local"]["predictions"].values()) >= 2
    assert not list(tmp_path.glob(".gguf-*"))


@pytest.mark.slow  # trains SmolLM2 once on two tasks (2 x 16 steps), answers 3 + 3 queries in both runtimes
@pytest.mark.usefixtures("one_thread")
def test_one_person_adapter_answers_every_task_on_llamacpp(smollm2_base_gguf: Path, tmp_path: Path, capsys) -> None:
    """Issue 32, `train.adapter-scope = user` on llama.cpp: the person's one adapter (one folder, one
    GGUF LoRA) answers LaMP-2 and LaMP-5 each in its own format, as PyTorch does."""
    _llama_cpp()
    from cdcda_fl.cli import main
    from cdcda_fl.core.config import load_config
    from cdcda_fl.data.lamp import Query, User
    from cdcda_fl.data.tasks import LAMP5_TEMPLATE
    from cdcda_fl.device.personalize import personalize_users
    from cdcda_fl.edge.llamacpp import answer_llamacpp

    movie = MOVIE_PROMPT
    movies = sci_fi_movies()
    topics = ["graph neural networks", "malware detection", "protein folding", "image denoising",
              "speech recognition", "robot grasping", "query optimization", "code search"]
    papers = [{"id": f"p{i}", "abstract": f"We propose a new method for {t}. It is accurate and fast on benchmarks.",
               "title": f"Mochi: fast {t}"} for i, t in enumerate(topics)]
    probes = ["sparse matrix kernels", "weather forecasting", "music transcription"]
    lamp2 = User(user_id="p1", task="LaMP_2", profile=movies,
                 queries=[Query(id=f"q2-{i}", input=movie + p.split("? ", 1)[1], gold="sci-fi")
                          for i, p in enumerate(PROBES)])
    lamp5 = User(user_id="p1", task="LaMP_5", profile=papers,
                 queries=[Query(id=f"q5-{i}", input=LAMP5_TEMPLATE.format(
                     abstract=f"We propose a new method for {t}. It is accurate and fast on benchmarks."),
                     gold=f"Mochi: fast {t}") for i, t in enumerate(probes)])
    people = {"p1": [lamp2, lamp5]}
    jobs = [(lamp2, []), (lamp5, [])]
    sets = ["methods=base,local", "device.model=smollm2-135m", "device.dtype=fp32", "train.steps=16",
            "train.lr=3e-3", "train.adapter-scope=user"]
    torch_res = personalize_users(jobs, load_config(None, sets), storage_dir=tmp_path, people=people)
    cpp_res = personalize_users(jobs, load_config(None, sets + ["device.runtime=llamacpp"]), storage_dir=tmp_path,
                                people=people)
    assert not [o for o in torch_res + cpp_res if isinstance(o, Exception)], (torch_res, cpp_res)
    folders = [p for p in (tmp_path / "adapters").glob("*/p1") if p.is_dir()]
    assert len(folders) == 1 and folders[0].parent.name.startswith("person-local-"), folders  # one adapter, both tasks
    for t, c in zip(torch_res, cpp_res):
        assert c["methods"]["local"]["train"]["reused"] is True  # the very adapter PyTorch answered with
    for method in ("base", "local"):  # tags: greedy llama.cpp (Q4_1) == greedy PyTorch but for one
        tp, cp = torch_res[0]["methods"][method]["predictions"], cpp_res[0]["methods"][method]["predictions"]
        assert sum(tp[q] == cp[q] for q in tp) >= len(tp) - 1, (method, tp, cp)
    tags = list(cpp_res[0]["methods"]["local"]["predictions"].values())
    assert sum(p == "sci-fi" for p in tags) >= 2, tags  # LaMP-2 answers are tags ...
    # ... and LaMP-5 answers are titles in the person's style, in both runtimes (24 free tokens of a
    # quantized and an fp32 model drift apart, so the check is the adapter's word, not equality)
    for res in (torch_res[1], cpp_res[1]):
        titles = list(res["methods"]["local"]["predictions"].values())
        assert sum("mochi" in p.lower() for p in titles) >= 2, titles
        assert not any("mochi" in p.lower() for p in res["methods"]["base"]["predictions"].values())

    # What a user copies to a board: the one exported GGUF LoRA, which answers both tasks' prompts.
    gguf = tmp_path / "p1.gguf"
    assert main(["export", str(folders[0]), "--out", str(gguf)]) == 0
    capsys.readouterr()
    both = [q.input for q in lamp2.queries + lamp5.queries]
    answers = answer_llamacpp(smollm2_base_gguf, gguf, both, max_new_tokens=24, n_threads=1)
    assert sum("sci-fi" in a.lower() for a in answers[:3]) >= 2 and sum("mochi" in a.lower() for a in answers[3:]) >= 2, answers
