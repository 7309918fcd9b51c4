"""What one device does for its user, without any Flower: share, then personalize and answer.

``share_records`` applies the user's consent policy (with PII scrubbing) and is the ONLY function
whose output is meant to leave the device besides the result of ``personalize_user``, which
holds predictions, metrics, ε and counts — never adapter weights or profile records.

``personalize_user`` runs the methods a report compares, on the device:
- ``base``: the on-device model zero-shot;
- ``rag``: the same with the top-k BM25 profile items in the prompt;
- ``local``: a private LoRA adapter trained on the user's real records only (OPPU-style);
- ``cdcda``: a private LoRA adapter trained on real + cloud-written synthetic records;
- with ``dp.enabled``, ``local`` and ``cdcda`` go through :func:`private_method` instead: DP
  candidates, a privacy-free choice on the cloud's synthetic records, and a fall-back to the base
  model when no candidate beats it (docs/dp.md);
- ``fedavg``, ``fedavg+local``, ``cdcda+fedavg``: the FedAvg global adapter as is, fine-tuned
  locally, or as CDCDA's starting point (device/federated.py; registered below);
- ``cloud``: the cloud model answering with the user's whole profile retrieved into the prompt.
  It is the non-private upper bound, so it is computed *here* with the cloud model loaded
  in-process (hf backend), never by sending the user's queries out; with a remote backend it is
  reported as skipped.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdcda_fl.config import Scalar, check_dp_selection, config_get, methods_of, parse_bool
from cdcda_fl.data.lamp import User
from cdcda_fl.data.retrieval import retrieve
from cdcda_fl.data.tasks import TaskSpec, get_task
from cdcda_fl.device.complete import complete_records, is_partial
from cdcda_fl.device.crossfit import RULE_VERSION as CROSSFIT_VERSION
from cdcda_fl.device.crossfit_check import CrossfitCheck
from cdcda_fl.device.federated import FEDERATED
from cdcda_fl.device.schedule import exposure_scale, train_cdcda
from cdcda_fl.device.select import SelectConfig, Selection, select_records
from cdcda_fl.device.synthetic_gate import (
    GateConfig,
    GateDecision,
    HeldOutScores,
    cap_record_weights,
    check_step_scale,
    decide,
    mean_loss,
)
from cdcda_fl.device.train_key import adapter_key, base_dtype, dp_key, gate_key
from cdcda_fl.edge.runtime import Answerer, AnswerRequest, make_answerer
from cdcda_fl.metrics import LOWER_IS_BETTER, primary_metric, score
from cdcda_fl.privacy.audit import membership_auc
from cdcda_fl.privacy.consent import ConsentPolicy, SharedRecords

TRAINED_METHODS = ("local", "cdcda")
TRAIN_META = "cdcda_train.json"  # training metadata, saved inside the adapter folder (atomically with it)


def share_records(user: User, cfg: Mapping[str, Scalar], *, id_key: bytes | None = None) -> SharedRecords:
    """The records (scrubbed, allowed fields only) this user's consent policy lets leave the device.

    ``cfg`` is the policy here (library use: experiments, audits); a device node applies its
    owner's file and the server's ceiling instead (``device_node.share``)."""
    return ConsentPolicy.from_config(cfg, user.user_id).apply(get_task(user.task), user.user_id, user.profile,
                                                              id_key=id_key)


def _label(spec: TaskSpec, item: Mapping[str, Any]) -> str | None:
    if spec.label_field is None or spec.kind == "generation":
        return None
    value = item.get(spec.label_field)
    if spec.kind == "regression":
        try:
            return str(int(float(value)))
        except (TypeError, ValueError):
            return None
    return str(value).strip().lower()


def mixture_weights(spec: TaskSpec, real: Sequence[Mapping[str, Any]], synthetic: Sequence[Mapping[str, Any]],
                    alpha: float) -> tuple[list[Mapping[str, Any]], list[float], list[float]]:
    """Synthetic records to train on and loss weights that keep the user's own label distribution.

    Why: the cloud only sees the records the user shared, so its label-conditioned records follow
    the *shared* labels — a biased sample (share half of four records and one label may be
    missing entirely). Training on them as they come teaches the adapter the wrong prior. The
    device knows its whole profile, so it corrects this privately:

    - labelled tasks: synthetic records with a label the user never used are dropped; for each
      label l with r_l real and s_l synthetic records, the synthetic ones get weight
      ``alpha * r_l / s_l`` and, when the cloud wrote none (s_l = 0), the real ones get
      ``1 + alpha``. Every label's total weight is then ``(1 + alpha) * r_l``: the real
      distribution, whatever the cloud covered.
    - generation tasks: all synthetic records share ``alpha * n_real`` of weight, so synthetic
      data adds a fixed mass (the mixing ratio ``alpha``) however many records the cloud wrote.

    Returns (kept synthetic records, weights of the real records, weights of the kept synthetic).
    """
    if not synthetic or alpha <= 0:
        return [], [1.0] * len(real), []
    if _label(spec, real[0]) is None:
        return list(synthetic), [1.0] * len(real), [alpha * len(real) / len(synthetic)] * len(synthetic)
    real_counts: dict[str, int] = {}
    for item in real:
        real_counts[_label(spec, item)] = real_counts.get(_label(spec, item), 0) + 1
    kept = [r for r in synthetic if _label(spec, r) in real_counts]
    syn_counts: dict[str, int] = {}
    for item in kept:
        syn_counts[_label(spec, item)] = syn_counts.get(_label(spec, item), 0) + 1
    real_w = [1.0 if syn_counts.get(_label(spec, item)) else 1.0 + alpha for item in real]
    syn_w = [alpha * real_counts[_label(spec, item)] / syn_counts[_label(spec, item)] for item in kept]
    return kept, real_w, syn_w


def _cloud_backend(cfg: Mapping[str, Scalar]):
    """The cloud model for the upper-bound baseline, loaded once per process like the base model."""
    from cdcda_fl.cloud.backends import make_backend
    from cdcda_fl.device.models import cached

    return cached(("cloud", str(cfg["cloud.backend"]), str(cfg["cloud.model"])), lambda: make_backend(cfg))


def _answer_with_cloud(spec: TaskSpec, prompts: list[str], cfg: Mapping[str, Scalar]) -> list[str]:
    from cdcda_fl.cloud.backends import Prompt

    backend = _cloud_backend(cfg)
    return backend.generate([Prompt.chat(p) for p in prompts], max_new_tokens=spec.max_new_tokens,
                            temperature=0.0, seed=int(cfg["seed"]))


def device_model_for(cfg: Mapping[str, Scalar]) -> Any:
    """One DeviceModel per worker process and base model: users swap adapters, never the base."""
    from cdcda_fl.device.lora import DeviceModel
    from cdcda_fl.device.models import cached, get_base_model

    dtype = base_dtype(cfg)
    model, quantization = str(cfg["device.model"]), str(cfg["device.quantization"]) or None
    return cached(("device", model, quantization, dtype),
                  lambda: DeviceModel(get_base_model(model, quantization=quantization, dtype=dtype)))


@dataclass
class _Deferred:
    """A method whose answers wait for the node's batched answering step (:func:`personalize_users`).

    ``request`` None: the method's answers are, by construction, another method's (``same_as``):
    CDCDA that fell back to local-only, a DP method that fell back to the base model.
    """

    method: str
    request: AnswerRequest | None
    seconds: float  # the method's own time before answering (training, checks)
    extra: dict[str, Any] = field(default_factory=dict)
    same_as: str | None = None


class _UserRun:
    """One user's personalization in progress: what every method needs, and the result being built."""

    def __init__(self, user: User, synthetic: Sequence[Mapping[str, Any]], cfg: Mapping[str, Scalar], *,
                 storage_dir: Path, model: Any, answerer: Answerer,
                 on_step: Callable[[str], None] | None, shared_ids: frozenset[str] | None = None) -> None:
        from cdcda_fl.device.lora import AdapterStore

        self.user, self.cfg, self.model = user, cfg, model
        #: the owner's ids of the records the device shared (None: derive them from ``cfg``'s policy)
        self.shared_ids = shared_ids
        self.storage_dir = Path(storage_dir)
        #: the saved adapter folder the model holds now (None: the plain base); what a runtime
        #: other than PyTorch answers with (cdcda_fl/edge/runtime.py)
        self.adapter_dir: Path | None = None
        self.answerer = answerer  # the node's ``device.runtime`` engine, shared by all its users
        self.pending: list[_Deferred] = []
        self.kept_handles: list[str] = []  # adapters kept in the PyTorch model until the answering step
        self.global_adapter: Any = None  # the task's FedAvg adapter (device/federated.py GlobalAdapter), if any
        self.spec = spec = get_task(user.task)
        max_q = int(cfg["eval.max-queries"])
        self.queries = user.queries[:max_q] if max_q > 0 else list(user.queries)
        self.golds = {q.id: q.gold for q in self.queries if q.gold is not None}
        self.inputs = [q.input for q in self.queries]
        self.retrieval_queries = [spec.query_text_of_input(i) for i in self.inputs]  # RAG and cloud share them
        self.batch = int(cfg["eval.batch-size"])
        self.step = on_step or (lambda _name: None)
        self.store = AdapterStore(self.storage_dir / "adapters")
        self.real_pairs = spec.profile_to_pairs(user.profile)
        self.received = [dict(r) for r in synthetic]
        self.dropped: list[tuple[dict[str, Any], str]] = []
        self.valid_synthetic: list[dict[str, Any]] = []
        self.incomplete: list[dict[str, Any]] = []  # records with fields the user did not share
        for rec in self.received:
            problem = spec.validate_item(rec)
            if problem is None:
                self.valid_synthetic.append(rec)
            elif is_partial(spec, rec):
                self.incomplete.append(rec)
            else:
                self.dropped.append((rec, f"invalid: {problem}"))
        self.usable_synthetic: list[dict[str, Any]] = list(self.valid_synthetic)
        self.kept_synthetic: list[dict[str, Any]] = []
        self.real_weights: list[float] = [1.0] * len(self.real_pairs)
        self.synth_weights: list[float] = []
        self.synth_pairs: list[tuple[str, str]] = []
        self._prepared = False
        self._base_losses: dict[tuple[str, str], float] = {}  # the plain base model's, per synthetic pair
        self.decision: GateDecision | None = None
        self.result: dict[str, Any] = {
            "user_id": user.user_id, "task": spec.name, "n_profile": len(user.profile),
            "n_queries": len(self.queries), "n_synthetic_received": len(synthetic),
            "n_synthetic_used": 0,
            "synthetic_bytes": len(json.dumps(list(synthetic), ensure_ascii=False, separators=(",", ":")).encode()),
            "methods": {}, "golds": self.golds,
        }

    # ------------------------------------------------------------------ helpers every method uses
    def answer_in_training_runtime(self, prompts: list[str]) -> list[str]:
        """Answers from the PyTorch model as it is now (a throw-away adapter of the holdout check)."""
        texts = self.model.generate(prompts, max_new_tokens=self.spec.max_new_tokens, batch_size=self.batch)
        return [self.spec.parse_answer(t) for t in texts]

    def clear(self) -> None:
        """Back to the plain base model."""
        self.model.clear_adapter()
        self.adapter_dir = None

    def defer(self, method: str, prompts: list[str], started: float, **extra: Any) -> None:
        """Queue ``method``'s answers to ``prompts`` with the adapter held now (or the base).

        The node answers every queued request of all its users together (mixed-adapter batches
        for PyTorch): the adapter is kept in the model under a handle until then, and the model
        goes back to the plain base for the next method.
        """
        handle = None
        if self.adapter_dir is not None and self.answerer.mixed_batches:
            handle = f"{self.spec.name}/{self.user.user_id}/{method}"
            self.model.keep(handle)
            self.kept_handles.append(handle)
        request = AnswerRequest(tuple(prompts), self.spec.max_new_tokens, self.adapter_dir, handle)
        self.pending.append(_Deferred(method, request, time.perf_counter() - started, extra))
        self.clear()

    def same_answers(self, method: str, as_method: str, started: float, **extra: Any) -> None:
        """``method`` answers exactly as ``as_method`` (same adapter, greedy): no second answering."""
        self.pending.append(_Deferred(method, None, time.perf_counter() - started, extra, same_as=as_method))
        self.clear()

    def answers_queued(self, method: str) -> bool:
        return any(d.method == method and d.request is not None for d in self.pending)

    def finish(self, texts: Mapping[int, list[str]], seconds_per_row: float) -> None:
        """Record every deferred method from its answers (``texts`` by ``id`` of the request)."""
        for d in self.pending:
            if d.request is not None:
                preds = [self.spec.parse_answer(t) for t in texts[id(d.request)]]
                self.record(d.method, preds, d.seconds + seconds_per_row * len(d.request.prompts), **d.extra)
        for d in self.pending:
            if d.same_as is not None:
                source = self.result["methods"][d.same_as]["predictions"]
                self.record(d.method, [source[q.id] for q in self.queries], d.seconds, **d.extra)
        self.pending = []
        order = {m: i for i, m in enumerate(methods_of(self.cfg))}
        self.result["methods"] = dict(sorted(self.result["methods"].items(), key=lambda kv: order.get(kv[0], 99)))

    def release(self) -> None:
        """Drop this user's kept adapters from the shared model."""
        for handle in self.kept_handles:
            self.model.release(handle)
        self.kept_handles = []

    def record(self, method: str, preds: list[str], seconds: float, **extra: Any) -> None:
        predictions = {q.id: p for q, p in zip(self.queries, preds)}
        entry: dict[str, Any] = {"predictions": predictions, "seconds": round(seconds, 3), **extra}
        if self.golds and len(self.golds) == len(predictions):
            entry["metrics"] = score(self.spec, self.golds, predictions)
        self.result["methods"][method] = entry

    def mia(self) -> dict[str, Any]:
        if not self.cfg["mia.enabled"]:
            return {}
        held_out = [(q.input, q.gold) for q in self.queries if q.gold is not None]
        return {"mia_auc": membership_auc(self.model.example_losses(self.real_pairs),
                                          self.model.example_losses(held_out))}

    def load_stored(self, key: str) -> dict[str, Any] | None:
        """The stored adapter ``key`` loaded into the model (its metadata, ``reused``), or None.

        An adapter folder without its metadata is from before metadata was written with it
        (atomically): it is retrained rather than reporting a reused DP adapter's ε as unknown."""
        path = self.store.path(self.user.user_id, key)
        if not self.store.exists(self.user.user_id, key) or not (path / TRAIN_META).is_file() or self.cfg["train.retrain"]:
            return None
        self.model.load_adapter(path)
        self.adapter_dir = path
        return {**json.loads((path / TRAIN_META).read_text()), "reused": True}

    def train_or_reuse(self, method: str, pairs: list[tuple[str, str]], weights: list[float]) -> dict[str, Any]:
        """Train (or reload from the device's store) an adapter; on return the model holds it.

        ``pairs`` start with the user's real pairs; the rest (CDCDA) are the cloud's, trained
        under ``train.synthetic-schedule`` (device/schedule.py). Never under DP: with
        ``dp.enabled`` both trained methods go through :func:`private_method`."""
        cfg = self.cfg
        n_real = len(self.real_pairs)
        key = f"{self.spec.name}-{method}-{adapter_key(cfg, pairs, weights, n_real)}"
        path = self.store.path(self.user.user_id, key)
        stored = self.load_stored(key)
        if stored is not None:
            return stored
        res = train_cdcda(self.model, cfg, pairs[:n_real], weights[:n_real], pairs[n_real:], weights[n_real:])
        info = {"steps": res.steps, "tokens": res.trained_tokens, "seconds": round(res.seconds, 3),
                "final_loss": res.final_loss, "epsilon": res.epsilon, "delta": res.delta,
                "n_real": len(self.real_pairs), "n_synthetic": len(pairs) - len(self.real_pairs)}
        self.model.save_adapter(path, extra_files={TRAIN_META: json.dumps(info)})
        self.adapter_dir = path
        return info

    def train_local(self) -> dict[str, Any]:
        """The local-only adapter (real records, weight 1): trained once, then reloaded from the store."""
        return self.train_or_reuse("local", list(self.real_pairs), [1.0] * len(self.real_pairs))

    def weighted_synthetic(self, real_items: Sequence[Mapping[str, Any]],
                           synthetic: Sequence[Mapping[str, Any]] | None = None
                           ) -> tuple[list[dict[str, Any]], list[float], list[float]]:
        """(kept synthetic records, real weights, capped synthetic weights) against ``real_items``:
        the mixture the final CDCDA adapter and the holdout check's adapter both train on.
        ``synthetic``: the records to weigh (default: every usable one)."""
        pool = self.usable_synthetic if synthetic is None else synthetic
        kept, real_w, syn_w = mixture_weights(self.spec, real_items, pool, float(self.cfg["train.synthetic-weight"]))
        return kept, real_w, cap_record_weights(syn_w, float(config_get(self.cfg, "train.synthetic-record-cap")))

    def select_synthetic(self) -> Selection:
        """``train.synthetic-select`` (device/select.py) on every usable record, scored with the
        adapter the model holds now against the plain base model. Leaves the model on the base."""
        records = self.usable_synthetic
        pairs = [self.spec.profile_to_pairs([r])[0] for r in records]

        def scorer(batch: Sequence[tuple[str, str]]) -> tuple[list[float], list[float]]:
            with_adapter = self.model.example_losses(list(batch), batch_size=self.batch)
            self.clear()
            missing = [p for p in batch if p not in self._base_losses]
            if missing:
                self._base_losses.update(zip(missing, self.model.example_losses(missing, batch_size=self.batch)))
            return with_adapter, [self._base_losses[p] for p in batch]

        try:
            return select_records(SelectConfig.from_config(self.cfg), records, pairs, scorer)
        finally:
            self.clear()

    # ------------------------------------------------------------------ the device's trust in cloud data
    def prepare_synthetic(self) -> None:
        """Complete partial records (device/complete.py), then weigh real and synthetic data.

        Completing a missing output uses the local-only adapter (trained here if need be), so this
        runs when CDCDA does, after local-only; under DP it never runs (the completion would be
        computed from private data the DP accounting does not cover).
        """
        if self._prepared:
            return
        self._prepared = True
        spec = self.spec
        if self.incomplete:
            self.step("complete")
            done, dropped = complete_records(spec, self.incomplete, answer_with_local=self._answer_with_local,
                                             write_with_base=self._write_with_base)
            self.usable_synthetic += done
            self.dropped += dropped
            self.result["n_synthetic_completed"] = len(done)
        selected = self.usable_synthetic
        untested = GateConfig.from_config(self.cfg).falls_back_untested(len(self.user.profile))
        if self.usable_synthetic and SelectConfig.from_config(self.cfg).scores and not untested:
            self.step("select")
            self.train_local()  # the user's whole history scores the cloud's records (device/select.py)
            selection = self.select_synthetic()
            selected = selection.kept
            self.dropped += selection.dropped
            self.result["n_synthetic_selected"] = len(selected)
        kept, self.real_weights, self.synth_weights = self.weighted_synthetic(self.user.profile, selected)
        kept_ids = {id(r) for r in kept}
        self.dropped += [(r, "label not in the user's profile") for r in selected if id(r) not in kept_ids]
        self.kept_synthetic = kept
        self.synth_pairs = spec.profile_to_pairs(kept)
        self.result["n_synthetic_used"] = len(self.synth_pairs)

    def _answer_with_local(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.train_local()
        try:
            return self.model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=self.batch)
        finally:
            self.clear()

    def _write_with_base(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        self.clear()
        return self.model.generate(prompts, max_new_tokens=max_new_tokens, batch_size=self.batch)

    def synthetic_decision(self) -> GateDecision:
        """The ``train.synthetic-gate`` rule for this user (decided once, stored on the device)."""
        if self.decision is not None:
            return self.decision
        gate = GateConfig.from_config(self.cfg)
        key = f"{self.spec.name}-gate-" + gate_key(self.cfg, self.real_pairs, self.real_weights, self.synth_pairs,
                                                    self.synth_weights)
        if gate.rule == "crossfit":  # a changed rule never reuses the old rule's decisions
            key += f"-x{CROSSFIT_VERSION}"
        path = self.store.path(self.user.user_id, key)
        if (path / TRAIN_META).is_file() and not self.cfg["train.retrain"]:
            self.decision = GateDecision(**json.loads((path / TRAIN_META).read_text()))
            return self.decision
        self.step("check")
        if gate.rule == "crossfit":  # every user, sparse ones included (device/crossfit.py)
            self.decision = CrossfitCheck(self, gate).decide()
        else:
            self.decision = decide(gate, self.user.profile, len(self.synth_pairs),
                                   seed=f"{self.cfg['seed']}:{self.user.user_id}",
                                   held_out=functools.partial(self._held_out, gate=gate))
        if self.decision.n_validation:  # only a decision that trained something is worth storing
            _write_meta_only(path, json.dumps(self.decision.to_dict()))
        return self.decision

    def _held_out(self, train_items: list[Mapping[str, Any]], held: list[Mapping[str, Any]], *,
                  gate: GateConfig) -> HeldOutScores:
        """A real-only and a real + synthetic adapter trained on ``train_items``, scored on ``held``:
        mean loss of the held-out outputs and the task metric of greedy answers to their inputs."""

        spec, cfg, model = self.spec, self.cfg, self.model
        real = spec.profile_to_pairs(train_items)
        held_pairs = spec.profile_to_pairs(held)
        golds = {str(i): out for i, (_inp, out) in enumerate(held_pairs)}
        metric = primary_metric(spec)
        budget = check_step_scale(gate, len(train_items), len(self.user.profile))
        selecting = SelectConfig.from_config(cfg).scores

        def train_and_score(real_w: list[float], synth: list[tuple[str, str]], syn_w: list[float]
                            ) -> tuple[int, float, float | None]:
            self.clear()
            res = train_cdcda(model, cfg, real, real_w, synth, syn_w, step_scale=budget)
            loss = mean_loss(model.example_losses(held_pairs))
            answers = self.answer_in_training_runtime([inp for inp, _out in held_pairs])
            return res.steps, loss, score(spec, golds, {str(i): a for i, a in enumerate(answers)}).get(metric)

        steps_real, loss_real, metric_real = train_and_score([1.0] * len(real), [], [])
        # The check's records are picked by ITS real-only adapter (trained without the held-out
        # items), so the held-out items never influence which records are tested.
        pool = self.select_synthetic().kept if selecting and self.usable_synthetic else None
        self.clear()  # the check's real-only adapter is done with (select_synthetic clears too, when it runs)
        kept, real_w, syn_w = self.weighted_synthetic(train_items, pool)
        if not kept:
            return HeldOutScores(loss_real, loss_real, metric_real, metric_real,
                                 higher_is_better=metric not in LOWER_IS_BETTER, same_data=True, steps=(steps_real,))
        steps_mix, loss_mix, metric_mix = train_and_score(real_w, spec.profile_to_pairs(kept), syn_w)
        self.clear()
        return HeldOutScores(loss_real, loss_mix, metric_real, metric_mix,
                             higher_is_better=metric not in LOWER_IS_BETTER, same_data=False,
                             steps=(steps_real, steps_mix))

    def save_synthetic_log(self) -> None:
        """What this device received from the cloud, kept and dropped, and why: on its own disk only."""
        if not self.received:
            return
        from cdcda_fl.device.synthetic_store import save_synthetic_log

        if not self._prepared:
            self.dropped += [(r, "incomplete: not completed (CDCDA did not run, or ran under DP)")
                             for r in self.incomplete]
        decision = self.decision.to_dict() if self.decision else {"rule": "not run", "used_synthetic": None,
                                                                  "reason": "CDCDA was not among the methods"}
        save_synthetic_log(self.storage_dir, self.user.user_id, self.spec.name, received=self.received,
                           kept=[dict(r) for r in self.kept_synthetic], dropped=self.dropped, decision=decision)


def _threads() -> int:
    """The CPU threads this worker's PyTorch uses (Ray sets them per actor); llama.cpp gets the same."""
    import torch

    return torch.get_num_threads()



# ---------------------------------------------------------------------- the method registry
def _base(run: _UserRun) -> None:
    run.defer("base", run.inputs, time.perf_counter())


def _rag(run: _UserRun) -> None:
    started = time.perf_counter()
    retrieved = retrieve(run.spec, run.user.profile, run.retrieval_queries, int(run.cfg["rag.k"]))
    run.defer("rag", [run.spec.rag_prompt(i, r) for i, r in zip(run.inputs, retrieved)], started)


def _cloud(run: _UserRun) -> None:
    started = time.perf_counter()
    if str(run.cfg["cloud.backend"]) != "hf":
        run.result["methods"]["cloud"] = {"skipped": "the cloud upper bound runs only with an in-process (hf) "
                                                     "cloud model: a remote one would need the user's queries"}
        return
    retrieved = retrieve(run.spec, run.user.profile, run.retrieval_queries, int(run.cfg["rag.cloud-k"]))
    texts = _answer_with_cloud(run.spec, [run.spec.rag_prompt(i, r) for i, r in zip(run.inputs, retrieved)], run.cfg)
    run.record("cloud", [run.spec.parse_answer(t) for t in texts], time.perf_counter() - started)


def _local(run: _UserRun) -> None:
    if run.cfg["dp.enabled"]:
        return _private(run, "local")
    started = time.perf_counter()
    info = run.train_local()
    run.defer("local", run.inputs, started, train=info, epsilon=info.get("epsilon"), **run.mia())


def _cdcda(run: _UserRun) -> None:
    """Real + synthetic, if the device's check says the cloud's records help this user; else local-only."""
    if run.cfg["dp.enabled"]:
        return _private(run, "cdcda")
    started = time.perf_counter()  # CDCDA's cost includes completing records and the holdout check
    run.prepare_synthetic()
    decision = run.synthetic_decision()
    check_seconds = round(time.perf_counter() - started, 3)  # completion + the check's trainings
    run.result["synthetic_decision"] = decision.to_dict()
    answer_with = decision.answers_with
    if answer_with == "cdcda":
        pairs = list(run.real_pairs) + list(run.synth_pairs)
        weights = list(run.real_weights) + list(run.synth_weights)
        info = run.train_or_reuse("cdcda", pairs, weights)
    else:
        run.result["n_synthetic_used"] = 0
        info = run.train_local() if answer_with == "local" else {"steps": 0, "base_model": True}
        if answer_with == "base":
            run.clear()
    extra = {"train": info, "epsilon": info.get("epsilon"),
             "decision": {"rule": decision.rule, "used_synthetic": decision.used_synthetic,
                          "answer_with": answer_with},
             "check_seconds": check_seconds, **run.mia()}
    if answer_with != "cdcda" and run.answers_queued(answer_with):
        run.same_answers("cdcda", answer_with, started, **extra)  # same model, greedy: the same answers
    else:
        run.defer("cdcda", run.inputs, started, **extra)


def _private(run: _UserRun, method: str) -> None:
    started = time.perf_counter()
    extra, run.adapter_dir = private_method(run.model, run.store, run.spec, run.user, method, run.valid_synthetic,
                                            run.cfg, shared_ids=run.shared_ids)
    if method == "cdcda":  # under DP: every valid cloud record but the validation split
        run.result["n_synthetic_used"] = int(extra["train"]["n_synthetic"])
    extra.update(run.mia())
    if extra["dp"]["fell_back"] and run.answers_queued("base"):
        run.same_answers(method, "base", started, **extra)  # the base model's own answers
    else:
        run.defer(method, run.inputs, started, **extra)


#: name -> what the method does for one user. A new method is one function and one entry here
#: (plus its name in config.METHODS for validation); nothing else in the device layer changes.
METHODS: dict[str, Callable[[_UserRun], None]] = {
    "base": _base, "rag": _rag, "local": _local, "cdcda": _cdcda, "cloud": _cloud,
}
METHODS.update(FEDERATED)  # fedavg, fedavg+local, cdcda+fedavg (device/federated.py)


def personalize_user(user: User, synthetic: Sequence[Mapping[str, Any]], cfg: Mapping[str, Scalar], *,
                     storage_dir: Path, device_model: Any | None = None,
                     on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train this user's private adapters, answer their held-out queries with every method, score.

    ``storage_dir`` is the device's own disk: adapters are saved there (atomically) and reused on
    a rerun with the same configuration and data, and so is what the device received from the
    cloud and decided about it (``synthetic/``, never sent). The returned dict is what may leave
    the device, as far as the report level allows (privacy/report.py).
    """
    (outcome,) = personalize_users([(user, synthetic)], cfg, storage_dir=storage_dir, device_model=device_model,
                                   on_step=on_step)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def personalize_users(jobs: Sequence[tuple[User, Sequence[Mapping[str, Any]]]], cfg: Mapping[str, Scalar], *,
                      storage_dir: Path, device_model: Any | None = None,
                      on_step: Callable[[str], None] | None = None,
                      shared: Mapping[tuple[str, str], frozenset[str]] | None = None,
                      global_adapters: Mapping[str, Any] | None = None) -> list[dict[str, Any] | Exception]:
    """:func:`personalize_user` for every (user, synthetic records) a node hosts, answering them together.

    Each user's methods train (or reuse) their adapters in turn; the answers of every method of
    every user are then generated in one pass: with PyTorch, mixed-adapter batches over one base
    model (each row with its own user's adapter, rows sorted by length and batched per answer
    budget), which keeps batches full where one user's 8 queries per method would not. Greedy
    answers equal answering user by user (tests/test_personalize_batch.py). A method's
    ``seconds`` is its own time plus its rows' share of the batched answering.

    One user's failure is that user's outcome (the exception), never the others'.
    ``shared``: (task, user id) -> the owner's ids of the records the device shared (its ledger,
    ``privacy/shared_ledger.py``); DP's private selection spends ε on the others only. Without
    it, the records ``cfg``'s own consent keys select (library use; a device's personalize
    message carries no consent keys, and reading them there is an error).
    ``global_adapters``: task -> the FedAvg global adapter (device/federated.py) for the federated methods.
    """
    model = device_model or device_model_for(cfg)
    answerer = make_answerer(cfg, device_model=model, storage_dir=Path(storage_dir),
                             n_threads=_threads() if str(cfg["device.runtime"]) != "torch" else None)
    outcomes: list[dict[str, Any] | Exception | None] = [None] * len(jobs)
    runs: list[tuple[int, _UserRun]] = []
    try:
        for i, (user, synthetic) in enumerate(jobs):
            run = None
            try:
                run = _UserRun(user, synthetic, cfg, storage_dir=storage_dir, model=model, answerer=answerer,
                               on_step=on_step, shared_ids=None if shared is None else shared[(user.task, user.user_id)])
                run.global_adapter = (global_adapters or {}).get(user.task)
                run.clear()
                for method in methods_of(cfg):
                    run.step(method)
                    METHODS[method](run)
                runs.append((i, run))
            except Exception as exc:  # this user only; its kept adapters go
                outcomes[i] = exc
                if run is not None:
                    run.release()
                model.clear_adapter()
        for i, run in runs:
            run.step("answer")
        failed = _answer_pending([run for _i, run in runs])
        for i, run in runs:
            if id(run) in failed:
                outcomes[i] = failed[id(run)]
                continue
            try:
                run.save_synthetic_log()
                outcomes[i] = run.result
            except Exception as exc:
                outcomes[i] = exc
    finally:
        for _i, run in runs:
            run.release()
    return outcomes  # type: ignore[return-value]


def _answer_pending(runs: Sequence[_UserRun]) -> dict[int, Exception]:
    """Answer every queued request of ``runs`` in one call, then record them; {id(run): error} for failures.

    If the joint call fails (one user's prompt too long for llama.cpp's context, say), each user
    is answered on its own, so the failure stays that user's.
    """
    if not runs:
        return {}
    answerer = runs[0].answerer  # one per node (personalize_users): every run holds the same
    failed: dict[int, Exception] = {}

    def answer(group: Sequence[_UserRun]) -> None:
        requests = [d.request for run in group for d in run.pending if d.request is not None]
        started = time.perf_counter()
        texts = answerer.answer_all(requests)
        rows = sum(len(r.prompts) for r in requests)
        per_row = (time.perf_counter() - started) / rows if rows else 0.0
        by_request = {id(r): t for r, t in zip(requests, texts)}
        for run in group:
            run.finish(by_request, per_row)

    try:
        answer(runs)
    except Exception as exc:
        if len(runs) == 1:
            return {id(runs[0]): exc}
        for run in runs:
            try:
                answer([run])
            except Exception as exc:
                failed[id(run)] = exc
    return failed


# ---------------------------------------------------------------------- the DP methods

def dp_training_data(spec: TaskSpec, user: User, synthetic: Sequence[Mapping[str, Any]], method: str,
                     cfg: Mapping[str, Scalar]) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[float],
                                                         list[tuple[str, str]]]:
    """(real pairs, synthetic training pairs, their weights, validation pairs) for a DP method.

    ``synthetic`` are the cloud's records that passed the task's validation: written from the
    records the user consented to share, so everything derived from them alone is free of the
    DP budget. Only the real pairs are private. Hence, unlike :func:`mixture_weights` (which
    uses the private label counts), under DP:

    - validation pairs are cloud-written records only: all of them for ``local`` (it never
      trains on them), a seeded ``dp.validation-fraction`` held out of training for ``cdcda``;
    - CDCDA's synthetic training pairs all get the same weight ``alpha * n_real / n_synthetic``
      (the mixing ratio; n is public in this accounting, as for δ and the plan), and none is
      dropped by the user's private label set: a weight or a record chosen from non-shared
      records would change with one of them, which the DP-SGD sensitivity bound does not allow.
    """
    from cdcda_fl.device.dp_select import holdout_split

    real_pairs = spec.profile_to_pairs(user.profile)
    records = [dict(r) for r in synthetic]
    if method == "cdcda" and records:
        fraction = float(config_get(cfg, "dp.validation-fraction"))
        train_recs, _, val_recs = holdout_split(records, None, fraction, seed=f"{cfg['seed']}:{user.user_id}")
    elif method == "cdcda":
        train_recs, val_recs = [], []
    else:
        train_recs, val_recs = [], records
    alpha = float(cfg["train.synthetic-weight"])
    synth_pairs = spec.profile_to_pairs(train_recs) if alpha > 0 else []
    synth_weights = [alpha * len(real_pairs) / len(synth_pairs)] * len(synth_pairs) if synth_pairs else []
    return real_pairs, synth_pairs, synth_weights, spec.profile_to_pairs(val_recs)


def _write_meta_only(path: Path, text: str) -> None:
    """A fall-back leaves no adapter: store just its metadata (atomically) so a rerun reuses the decision."""
    from cdcda_fl.atomic import atomic_dir

    with atomic_dir(path) as tmp:
        (tmp / TRAIN_META).write_text(text, encoding="utf-8")


def private_method(model: Any, store: Any, spec: TaskSpec, user: User, method: str,
                   synthetic: Sequence[Mapping[str, Any]], cfg: Mapping[str, Scalar], *,
                   shared_ids: Collection[str] | None = None) -> tuple[dict[str, Any], Path | None]:
    """Train (or reuse) one DP method's adapter: DP-SGD candidates (:func:`~cdcda_fl.device.dp_select.train_private`)
    or, for CDCDA with ``dp.selection = private``, a cloud-trained adapter and one ε-DP choice
    (:func:`~cdcda_fl.device.dp_select.select_public_privately`).

    On return the model holds the chosen adapter, or none when the decision fell back to the base;
    the second value is that adapter's folder in ``store`` (None after a fall-back).
    The first is the method's report entry: ``train`` (private training info), ``epsilon`` (composed over
    every candidate trained: what the release costs, fall-back included, since the decision to fall
    back is computed from the candidates) and ``dp`` (the decision: chosen candidate or fell back,
    validation losses of the base and of every candidate, σ, ε, δ).
    """
    from cdcda_fl.device.dp_select import candidates_for, public_lora, select_public_privately, train_private

    real_pairs, synth_pairs, synth_weights, validation = dp_training_data(spec, user, synthetic, method, cfg)
    weights = [1.0] * len(real_pairs) + synth_weights
    selection = check_dp_selection(cfg)
    # Private selection needs cloud records to train on and a target ε to spend (with only
    # dp.noise-multiplier set there is no ε to give the exponential mechanism): else DP-SGD candidates.
    private_select = (method == "cdcda" and selection == "private" and bool(synth_pairs or validation)
                      and float(config_get(cfg, "dp.epsilon") or 0.0) > 0)
    public: list[tuple[str, str]] = []
    private_pairs: list[tuple[str, str]] = []
    if private_select:
        # Every cloud record trains the public adapter (no synthetic hold-out is needed: the choice is
        # made on the non-shared real records, with the exponential mechanism).
        if shared_ids is None:  # library use: cfg is the user's policy
            shared_ids = share_records(user, cfg).local_ids
        shared_ids = set(shared_ids)
        private_pairs = spec.profile_to_pairs([r for r in user.profile if str(r["id"]) not in shared_ids])
        public = [*synth_pairs, *validation]
        candidates = candidates_for(cfg, len(real_pairs))[:1]
    else:
        shared_ids = None  # DP-SGD covers every real record, shared or not
        warm = parse_bool(config_get(cfg, "dp.public-warmstart"), what="dp.public-warmstart")
        if method == "cdcda" and synth_pairs and warm:
            # The cloud's records are public here: a noise-free first stage, then DP-SGD on the real pairs only.
            public, synth_pairs, synth_weights, weights = synth_pairs, [], [], [1.0] * len(real_pairs)
        scale = exposure_scale(cfg, weights, real_pairs)
        candidates = candidates_for(cfg, len(real_pairs) + len(synth_pairs), step_scale=scale)
    stage = public_lora(candidates[0].lora, cfg, len(public)) if public else None
    key = f"{spec.name}-{method}-dp-" + dp_key(cfg, method, candidates, stage,
                                               (real_pairs, synth_pairs, synth_weights, validation, public), shared_ids)
    path = store.path(user.user_id, key)
    meta = path / TRAIN_META
    if meta.is_file() and not cfg["train.retrain"]:
        info = json.loads(meta.read_text())
        decision = info.get("dp") or {}
        train = {**{k_: v for k_, v in info.items() if k_ != "dp"}, "reused": True}
        if decision.get("fell_back"):
            model.clear_adapter()
            return {"train": train, "epsilon": info.get("epsilon"), "dp": decision}, None
        if decision and store.exists(user.user_id, key):
            model.load_adapter(path)
            return {"train": train, "epsilon": info.get("epsilon"), "dp": decision}, path
    started = time.perf_counter()
    if private_select:
        decision, res = select_public_privately(
            model, public, private_pairs, cfg, candidates[0].lora, seed=f"{cfg['seed']}:{user.user_id}",
            utilities=lambda m, pairs: metric_utilities(m, spec, pairs),
            utility_name=f"the greedy answer's {primary_metric(spec)} in [0, 1]")
        return _private_entry(model, store, path, decision, res, started, real_pairs, public)
    decision, res = train_private(model, real_pairs, synth_pairs, validation, cfg,
                                  synth_weights=synth_weights if synth_pairs else None, candidates=candidates,
                                  public_pairs=public)
    return _private_entry(model, store, path, decision, res, started, real_pairs, [*synth_pairs, *public],
                          n_public=len(public))


#: Range of the error metrics that metric_utilities turns into [0, 1] utilities (LaMP-3 scores are 1-5).
_ERROR_SCALE = {"mae": 4.0, "rmse": 4.0}


def metric_utilities(model: Any, spec: TaskSpec, pairs: Sequence[tuple[str, str]]) -> list[float]:
    """Each record's task metric for the model's greedy answer, in [0, 1] (1 = right; errors scaled down).

    The utility of :func:`cdcda_fl.device.dp_select.select_public_privately`: what the user would
    see, per record, so one record moves a sum by at most 1.
    """
    metric = primary_metric(spec)
    answers = model.generate([p for p, _ in pairs], max_new_tokens=spec.max_new_tokens)
    out = []
    for (_, gold), text in zip(pairs, answers):
        value = float(score(spec, {"r": gold}, {"r": spec.parse_answer(text)})[metric])
        if metric in LOWER_IS_BETTER:
            value = 1.0 - value / _ERROR_SCALE.get(metric, 1.0)
        out.append(min(1.0, max(0.0, value)))
    return out


def _private_entry(model: Any, store: Any, path: Path, decision: Any, res: Any, started: float,
                   real_pairs: Sequence[Any], synth_pairs: Sequence[Any], *, n_public: int | None = None
                   ) -> tuple[dict[str, Any], Path | None]:
    """Store a DP method's adapter (or, after a fall-back, only its metadata) and build its report entry."""
    d = decision.to_dict()
    info: dict[str, Any] = {
        "steps": sum(int(c.get("steps") or c.get("public_steps") or 0) for c in d["candidates"]),
        "seconds": round(time.perf_counter() - started, 3),
        "final_loss": None if res is None else res.final_loss, "tokens": None if res is None else res.trained_tokens,
        "epsilon": decision.epsilon, "delta": decision.delta, "n_real": len(real_pairs),
        "n_synthetic": len(synth_pairs), "n_public_warmstart": len(synth_pairs) if n_public is None else n_public,
        "n_validation": decision.n_validation, "dp": d}
    text = json.dumps(info)
    if decision.fell_back:
        _write_meta_only(path, text)
    else:
        model.save_adapter(path, extra_files={TRAIN_META: text})
    entry = {"train": {k_: v for k_, v in info.items() if k_ != "dp"}, "epsilon": decision.epsilon, "dp": d}
    return entry, None if decision.fell_back else path
