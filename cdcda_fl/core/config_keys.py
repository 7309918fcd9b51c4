"""Every run-config key of cdcda-fl with its one default and its help text (a data table).

``cdcda_fl.core.config`` reads, coerces and validates keys against this table; `cdcda run
--help-config` prints it in this order. A default lives here and nowhere else
(tests/test_design.py greps for a second literal).
"""

from __future__ import annotations

from cdcda_fl.core.method_table import METHODS

Scalar = str | int | float | bool

# key -> (default, help). The order is the order of `cdcda run --help-config`.
DEFAULTS: dict[str, tuple[Scalar, str]] = {
    # ------------------------------------------------------------------ what to run
    "tasks": ("LaMP_2,LaMP_5", "comma-separated LaMP tasks (LaMP_1,LaMP_2,LaMP_3,LaMP_4,LaMP_5,LaMP_7)"),
    "users": (2, "max users per task (the users with most history are kept, as OPPU does)"),
    "split": ("dev", "which split's questions are each user's held-out evaluation"),
    "data-dir": ("", "LaMP data directory (LaMP_k/ folders); empty = seeded personas written into the run dir"),
    "data.strict": (False, "refuse the run if any record is invalid (default: skip those users, report them)"),
    "out-dir": ("runs/default", "run directory: results, predictions, audit log; rerun resumes here"),
    "seed": (0, "seed for personas, consent sampling, training and generation"),
    "methods": ("base,rag,local,cdcda,cloud", f"subset of {','.join(METHODS)}"),
    "personas.queries": (8, "held-out queries per synthetic user"),
    "personas.multitask": (False, "when the run writes its own personas: one person per user id across every "
                                  "task (cdcda data personas --multitask; tasks LaMP_2, LaMP_3, LaMP_5, LaMP_7)"),
    # ------------------------------------------------------------------ device model and training
    "device.model": ("smollm2-135m", "on-device model: preset (smollm2-135m, gemma3-270m, tiny-random), HF id or path"),
    "device.quantization": ("", "'' (full precision), '8bit' or '4bit' (bitsandbytes)"),
    "device.dtype": ("auto", "base weights: auto (bf16 where measured faster: CUDA, and SmolLM2 on CPUs with "
                             "native bf16), bf16 (LoRA parameters and optimizer state stay fp32) or fp32"),
    "device.runtime": ("torch", "answering runtime: 'torch' (transformers + PEFT) or 'llamacpp' (bundled GGUF base "
                                "+ the adapter exported to GGUF; needs the edge extra, see docs/edge.md)"),
    "device.storage-dir": ("", "simulated devices' own disk (private adapters); '' = OUT/devices. Adapters are "
                               "keyed by config and data, so runs sharing it reuse identical adapters"),
    "train.steps": (24, "optimizer steps per adapter (used when train.epochs is 0)"),
    "train.epochs": (0.0, "epochs per adapter instead of steps (0 = use train.steps)"),
    "train.lr": (1e-3, "learning rate (AdamW)"),
    "train.batch-size": (4, "training batch size"),
    "train.rank": (8, "LoRA rank"),
    "train.alpha": (16, "LoRA alpha"),
    "train.dropout": (0.0, "LoRA dropout (0 = none: on CPU a dropout mask costs ~35 % of a training step)"),
    "train.max-length": (256, "max tokens per training example"),
    "train.target-modules": ("q_proj,k_proj,v_proj,o_proj", "comma-separated modules that get LoRA"),
    "train.lora-layers": (0, "LoRA only in the top N decoder layers (0 = every layer); the frozen layers below "
                            "run once per training example instead of once per step (docs/device.md)"),
    "train.synthetic-weight": (1.0, "mixing ratio: total loss weight of synthetic data relative to real data, "
                                    "kept per label for labelled tasks (see device/methods/mixture.py)"),
    "train.equal-real-exposure": (True, "scale CDCDA's step budget by (real + synthetic weight) / real weight, so "
                                        "real records get as many updates as in local training"),
    "train.synthetic-record-cap": (1.0, "no synthetic record weighs more than this many real records "
                                        "(0 = no cap; see device/synthetic_gate.py)"),
    "train.synthetic-schedule": ("mix", "how CDCDA trains on real + synthetic: mix = one weighted training on both; "
                                        "synthetic-first = the cloud's records, then local-only's training on the "
                                        "real ones (device/schedule.py)"),
    "train.synthetic-select": ("all", "which of the cloud's records the device trains on: all, or style = the "
                                      "train.synthetic-select-keep share the user's adapter finds most likely "
                                      "relative to the base model (device/select.py)"),
    "train.synthetic-select-keep": (0.5, "share of the cloud's records train.synthetic-select = style keeps"),
    "train.synthetic-gate": ("crossfit", "does the device use the cloud's records? crossfit = only if they lower "
                                         "the loss on the user's real items, each held out once over "
                                         "train.synthetic-gate-folds folds (any profile size; CDCDA answers with "
                                         "the base model where personalization scores below it); holdout = a "
                                         "held-out third (needs train.synthetic-gate-min-held-out items); none = always"),
    "train.synthetic-gate-folds": (2, "crossfit check: folds over the user's real items (at most one per item)"),
    "train.synthetic-gate-criterion": ("loss+better-metric", "the check's rule: loss+better-metric = lower held-out "
                                                             "loss AND a strictly better task metric on the held-out "
                                                             "items (a tie falls back); loss+metric = AND a metric no "
                                                             "worse; loss = loss only; better-metric = a strictly "
                                                             "better metric alone (the loss when there is none)"),
    "train.synthetic-gate-fraction": (0.34, "share of the user's real items the holdout check holds out"),
    "train.synthetic-gate-margin": (0.0, "nats per output token synthetic data must gain on held-out items"),
    "train.synthetic-gate-min-real": (0, "users with fewer real items use the cloud's records unchecked (0: nobody)"),
    "train.synthetic-gate-min-held-out": (3, "held-out items a decision to use the cloud's records needs; smaller "
                                              "profiles (under this + 2 items) fall back to local-only"),
    "train.synthetic-gate-budget": ("epochs", "holdout check's training budget: epochs = its adapters see each "
                                              "training item as often as the final ones (steps scaled by the "
                                              "share of items they train on); steps = the final adapters' steps"),
    "train.retrain": (False, "retrain adapters even if a finished one is stored"),
    "train.adapter-scope": ("task", "task = one adapter per user and task; user = one adapter per person over "
                                    "every task the device holds for them (tasks weighted by train.task-mix-alpha, steps x tasks; "
                                    "docs/multitask.md)"),
    "train.task-mix-alpha": (0.5, "adapter-scope user: task t weighs n_t^alpha / sum n^alpha of the person's "
                                  "loss (0 = every task equal: each task's items get as many updates as under "
                                  "scope task; 1 = proportional to items)"),
    "dp.enabled": (False, "DP-SGD (Opacus) on the LoRA parameters"),
    "dp.epsilon": (0.0, "target epsilon (0 = use dp.noise-multiplier)"),
    "dp.noise-multiplier": (1.0, "noise multiplier when dp.epsilon is 0"),
    "dp.max-grad-norm": (1.0, "per-sample clipping norm"),
    "dp.delta": (0.0, "delta (0 = 1/n^1.1 for n training examples)"),
    "dp.accountant": ("rdp", "Opacus accountant: rdp or prv"),
    "dp.auto": (True, "with dp.enabled: train the few-record DP plans (rank 1-4 LoRA on v/q+v, full batch, few "
                      "steps; see docs/dp.md) instead of train.* and dp.max-grad-norm, which suit non-private training"),
    "dp.candidates": (1, "DP adapters trained per user and method (dp.auto plans, 1-3); one noise multiplier makes "
                         "their composition meet dp.epsilon, and the best on validation is kept"),
    "dp.fallback": (True, "answer with the base model when no DP adapter beats it on the privacy-free validation "
                          "(the synthetic records: they derive from consented records only)"),
    "dp.fallback-margin": (0.01, "relative validation-loss margin a DP adapter must beat the base by to be kept"),
    "dp.public-warmstart": (True, "CDCDA+DP: train the adapter first WITHOUT noise on the cloud's records (public "
                                  "here: written from consented records only), then DP-SGD on the real records; the "
                                  "noise-free adapter alone is a candidate too (docs/dp.md)"),
    "dp.selection": ("private", "CDCDA+DP's choice between its adapter and the base: synthetic = lowest loss on "
                                  "held-out cloud records (DP-SGD candidates, warm-started); private = train on the "
                                  "cloud's records only and spend all of dp.epsilon on one exponential-mechanism "
                                  "choice scored on the user's non-shared records (needs dp.epsilon > 0; docs/dp.md)"),
    "dp.public-steps": (16, "CDCDA+DP warm start: noise-free steps on the cloud's records"),
    "dp.public-lr": (3e-3, "CDCDA+DP warm start: learning rate of the noise-free steps"),
    "dp.validation-fraction": (0.25, "CDCDA+DP: fraction of the synthetic records held out of training to validate "
                                     "on (local+DP validates on all of them; it never trains on them)"),
    "rag.k": (2, "profile items retrieved (BM25) into the prompt for the rag method"),
    "rag.cloud-k": (8, "profile items (BM25 order) in the cloud upper bound's prompt: it may see the whole profile"),
    "eval.batch-size": (16, "generation batch size on the device (rows of all methods and hosted users "
                                "share batches)"),
    "eval.max-queries": (0, "answer at most this many queries per user (0 = all)"),
    "eval.report": ("auto", "what a device's result reply may carry: predictions | metrics | none | auto "
                            "(= predictions in simulation, metrics on real devices); a device's consent file can only lower it"),
    "mia.enabled": (False, "membership-inference AUC (loss threshold) on each trained adapter"),
    # ------------------------------------------------------------------ federated baselines (issue 31)
    "fedavg.rounds": (3, "FedAvg rounds of the global LoRA adapter (methods fedavg, fedavg+local, cdcda+fedavg); "
                         "the adapter has local LoRA's rank, targets and base"),
    "fedavg.local-steps": (8, "optimizer steps a node trains the global adapter per round on its users' real records"),
    "fedavg.fraction": (1.0, "fraction of a task's nodes sampled per round (Flower FedAvg fraction_train)"),
    "fedavg.min-nodes": (1, "nodes a round needs at least (FedAvg min_train_nodes / min_available_nodes): a round "
                            "waits for this many, then completes with whoever replies"),
    "fedavg.timeout": (600.0, "seconds a FedAvg round waits for replies; a node that has not replied by then is "
                              "left out of that round's average (0 = Flower's default, 3600)"),
    # ------------------------------------------------------------------ consent (device side)
    "consent.share-fraction": (0.5, "fraction of profile records a user shares with the cloud (0..1)"),
    "consent.fields": ("", "comma-separated fields that may be shared (empty = all fields of the task)"),
    "consent.deny-terms": ("", "comma-separated terms: a record containing any is never shared"),
    "consent.deny-labels": ("", "comma-separated labels/tags never shared"),
    "consent.record-ids": ("", "comma-separated record ids to share explicitly (the owners' ids: a simulation "
                               "writes them into its devices' file; never sent to a device)"),
    "consent.redact-terms": ("", "comma-separated terms scrubbed to [REDACTED] (the record is still shared)"),
    "consent.scrub": (True, "PII scrubbing of shared text (e-mails, phones, URLs, handles, long numbers)"),
    "consent.overrides": ("", "per-user consent overrides file (JSON/TOML: user id -> keys)"),
    # ------------------------------------------------------------------ cloud
    "cloud.backend": ("hf", "hf (in-process transformers) or openai (OpenAI-compatible HTTP endpoint); "
                      "simulation only: oracle (further real items of the user: the ceiling, not private) or "
                      "noise (other users' items, random labels: the floor)"),
    "cloud.model": ("gemma3-270m", "cloud model: preset, HF id or path (hf); model name (openai)"),
    "cloud.base-url": ("", "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1"),
    "cloud.api-key-env": ("", "environment variable holding the API key (never logged)"),
    "cloud.allow-insecure-http": (False, "allow plain http:// to a non-loopback cloud.base-url (records and key unencrypted)"),
    "cloud.batch-size": (8, "prompts per generation batch in the cloud"),
    "cloud.timeout": (120.0, "HTTP timeout per request in seconds"),
    "cloud.max-retries": (4, "retries on 429/5xx/connection errors"),
    "cloud.concurrency": (4, "parallel HTTP requests"),
    "cloud.prompt-style": ("auto", "auto, continuation (base models) or chat"),
    "cloud.device": ("", "device of the in-process cloud model ('' = cuda if available, else cpu)"),
    "cloud.embed-filter": (False, "filter synthetic records by MiniLM similarity to the user's records"),
    "cloud.embed-min-sim": (0.2, "embed filter: drop records less similar than this to the user's records"),
    "cloud.embed-max-sim": (0.95, "embed filter: drop records more similar than this (near copies)"),
    "cloud.cache-dir": ("", "server-side cache of the writer's records: a call with the same writer, settings, seed "
                            "and shared records (ids aside) reuses them instead of generating again "
                            "(experiments that rerun one share on the same users; '' = off)"),
    "synthetic.per-user": (16, "synthetic records the cloud writes per user"),
    "synthetic.max-rounds": (3, "generation rounds per user to reach synthetic.per-user"),
    "synthetic.temperature": (0.8, "sampling temperature in the cloud"),
    "synthetic.max-new-tokens": (64, "new tokens per cloud generation"),
    "synthetic.few-shot": (4, "shared records shown per prompt"),
    "synthetic.max-prompts-per-round": (32, "prompts per user per generation round at most"),
    "synthetic.near-dup": (0.7, "token-set Jaccard above which a record is a near duplicate"),
    "synthetic.label-quota": (True, "spread target labels over the user's own label distribution"),
    "synthetic.person-context": (0, "with train.adapter-scope=user: how many of the person's shared records of their "
                                    "other tasks each prompt shows as their writing (one request per person; never "
                                    "another user's records); 0 = each task alone"),
    # ------------------------------------------------------------------ orchestration
    "rounds": (1, "rounds; each round personalizes a fraction of the users not yet finished"),
    "fraction": (1.0, "fraction of unfinished users selected per round"),
    "timeout": (0.0, "seconds to wait for replies per phase (0 = no limit)"),
    "chunk-users": (1024, "users augmented and personalized per batch of messages (bounds server memory)"),
    "min-nodes": (1, "wait for at least this many nodes before starting"),
    "node-wait": (120.0, "seconds to wait for nodes to connect"),
    "sim.num-supernodes": (0, "simulated devices (0 = users / sim.users-per-node)"),
    "sim.users-per-node": (1, "users one simulated device node serves (>1 batches users per Flower message)"),
    "sim.client-cpus": (1.0, "CPUs per simulated device (Ray actor); actors = floor(cpus / this)"),
    "sim.client-gpus": (0.0, "GPUs per simulated device"),
    "sim.ray-address": ("", "existing Ray cluster to join (e.g. 127.0.0.1:6379); empty = start a local one"),
    "sim.cpus": (0, "CPUs Ray may use on a local start (0 = all)"),
    "sim.max-in-flight": (0, "messages the server keeps queued for simulated devices at once (0 = 4 per Ray "
                             "actor): Flower's simulation scans every queued message for every node at each "
                             "poll, so a long queue over 1000 nodes takes a core"),
    "debug.crash-users": ("", "fault drill: the device ClientApp raises for these user ids (tests failure handling)"),
}
