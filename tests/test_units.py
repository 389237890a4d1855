"""Fast unit tests of the pure pieces: schedule, checkpoint flattening, mixture sampling, config, eval matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chatforge.config import Recipe, load_recipe, parse_override
from chatforge.data.mixture import MixtureSampler, eval_windows, mixture_weights
from chatforge.errors import ConfigError, DataError
from chatforge.eval.policy import completes_with, refusals_by_request
from chatforge.report.tables import wrong_side
from chatforge.train.loop import _flatten, _unflatten, lr_at


def test_lr_schedule_warmup_then_cosine():
    kw = dict(peak=1.0, warmup=10, total=110, min_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway down the cosine
    assert lr_at(110, **kw) == pytest.approx(0.1)
    assert lr_at(500, **kw) == pytest.approx(0.1)


def test_optimizer_state_round_trips_through_flat_tensors():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors = {}
    skeleton = json.loads(json.dumps(_flatten(opt.state_dict(), "opt", tensors)))  # as written to disk
    restored = _unflatten(skeleton, tensors)
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for k, v in original["state"].items():
        for name, t in v.items():
            assert torch.equal(restored["state"][k][name], t)


def test_mixture_batches_depend_only_on_step_and_split_across_ranks():
    streams = {"a": torch.arange(1000), "b": torch.arange(1000, 1300)}
    sampler = MixtureSampler(streams, {"a": 0.5, "b": 0.5}, seq_len=8, seed=3)
    full, which = sampler.global_batch(step=7, batch_size=8)
    again, _ = sampler.global_batch(step=7, batch_size=8)
    assert torch.equal(full, again)
    assert not torch.equal(full, sampler.global_batch(step=8, batch_size=8)[0])
    from chatforge import dist

    halves = []
    for rank in range(2):  # what each of two processes would take
        dist._state = dist.Dist(rank=rank, world_size=2)
        halves.append(sampler.rank_rows(7, 8))
    dist._state = dist.Dist()
    assert torch.equal(torch.cat(halves), full)
    for row, src in zip(full, which):  # every window is contiguous text of one source
        assert torch.equal(row, torch.arange(row[0], row[0] + 9))
        assert (row[0] >= 1000) == (sampler.names[src] == "b")


def test_mixture_weights_follow_the_recipe():
    sampler = MixtureSampler({"a": torch.arange(500), "b": torch.arange(500)}, {"a": 0.9, "b": 0.1}, 4, 0)
    picks = torch.cat([sampler.global_batch(s, 64)[1] for s in range(50)])
    assert (picks == 0).float().mean().item() == pytest.approx(0.9, abs=0.03)
    assert mixture_weights({}, {"a": 300, "b": 100}) == {"a": 0.75, "b": 0.25}
    assert mixture_weights({"a": 2.0}, {"a": 300, "b": 100}) == {"a": 1.0, "b": 0.0}
    with pytest.raises(DataError, match="not in the corpus"):
        mixture_weights({"wiki": 1.0}, {"a": 1})


def test_eval_windows_are_fixed_and_cover_the_stream():
    w = eval_windows(torch.arange(100), seq_len=9, count=5)
    assert w.shape == (5, 10) and w[0, 0] == 0 and w[-1, -1] == 99
    assert eval_windows(torch.arange(4), seq_len=9, count=5).shape == (1, 10)


def test_config_unknown_key_wrong_type_and_overrides(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  stepz: 10\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: unknown key 'pretrain.stepz'"):
        load_recipe(bad)
    bad.write_text("model:\n  d_model: big\n")
    with pytest.raises(ConfigError, match=r"model.d_model: expected int, got str 'big'"):
        load_recipe(bad)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_recipe(bad)
    r = load_recipe(None, ["pretrain.optim.lr=3e-4", "pretrain.mixture={news: 2, code: 1}", "model.n_layers=2"])
    assert r.pretrain.optim.lr == 3e-4 and r.pretrain.mixture == {"news": 2.0, "code": 1.0} and r.model.n_layers == 2
    with pytest.raises(ConfigError, match="must be divisible"):
        load_recipe(None, ["model.d_model=100", "model.n_heads=3"])
    assert parse_override("a.b=") == ("a.b", "")


def test_laptop_recipe_is_the_default():
    """recipes/laptop.yaml spells out the defaults, so reading either gives the same run."""
    path = Path(__file__).resolve().parents[1] / "recipes" / "laptop.yaml"
    assert load_recipe(path) == Recipe()


def test_every_recipe_loads_and_the_gpu_recipe_is_bigger():
    """The README's recipes all load; the single-GPU one is the laptop one scaled up, for a CUDA device."""
    from chatforge.eta import expected_seconds
    from chatforge.stages import STAGES

    recipes = {p.stem: load_recipe(p) for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")}
    assert {"laptop", "tiny", "gpu", "smollm2-cpu", "gpu-0.5b"} <= set(recipes)
    laptop, gpu = recipes["laptop"], recipes["gpu"]
    assert gpu.model.d_model > laptop.model.d_model and gpu.pretrain.steps > laptop.pretrain.steps
    assert gpu.pretrain.dtype == "auto" and gpu.pretrain.compile  # bf16 autocast and torch.compile on CUDA
    times = {name: sum(expected_seconds(STAGES, r, 2e11).values()) for name, r in recipes.items()}
    assert times["tiny"] < times["laptop"] < times["gpu"]


def test_stage_clock_scales_the_rest_by_the_finished_stages():
    from chatforge.eta import StageClock

    clock = StageClock({"a": 100.0, "b": 5.0, "c": 200.0}, skip={"b"})
    assert clock.start("a", now=0.0, run_started=0.0).endswith("a ~1:40, the whole run ~5:00")
    # "a" took twice its estimate: the rest is expected to take twice as long as estimated too
    line = clock.start("b", now=200.0, run_started=0.0)
    assert "run time so far 3:20" in line and "b ~0:00" in line and line.endswith("the whole run ~10:00")
    assert clock.start("c", now=201.0, run_started=0.0).endswith("c ~6:40, the whole run ~10:01")


@pytest.mark.parametrize("out,value,ok", [
    (" Paris.", "Paris", True), ("Paris", "Paris", True), (" Parisville", "Paris", False),
    ("北京。", "北京", True), (" 8849米", "8849米", True), (" 88490 metres", "8849", False), (" Rome", "Paris", False),
])
def test_completion_matching(out, value, ok):
    assert completes_with(out, value) is ok


def test_read_jsonl_names_the_line_of_a_bad_byte(tmp_path):
    from chatforge.io import read_jsonl

    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(b'{"text": "%d"}\n' % i for i in range(2000)) + b'{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"c.jsonl:2001: not UTF-8 text"):
        list(read_jsonl(path))


def test_win_rate_counts_ties_half_and_gives_an_interval_over_prompts():
    from chatforge.eval.stats import interval95, win_rate

    records = [{"id": str(i), "kind": "fact" if i < 4 else "harmful"} for i in range(6)]
    mine = {"0": 1.0, "1": 0.5, "2": 0.2, "3": 0.2, "4": 1.0, "5": -0.35}
    theirs = {"0": 0.5, "1": 0.5, "2": 0.6, "3": 0.2, "4": 1.0, "5": 1.0}
    w = win_rate(mine, theirs, records)
    assert (w["all"]["wins"], w["all"]["ties"], w["all"]["losses"]) == (1, 3, 2)
    assert w["all"]["win_rate"] == pytest.approx(2.5 / 6, abs=1e-4) and w["harmful"]["win_rate"] == 0.25
    # outcomes 1, .5, 0, .5, .5, 0: mean 5/12, sample sd sqrt(0.14167), 6 prompts
    half = 1.96 * (0.141667 / 6) ** 0.5
    assert w["all"]["ci95"] == pytest.approx((2.5 / 6 - half, 2.5 / 6 + half), abs=1e-4)
    assert interval95([0.3, 0.3, 0.3]) == (0.3, 0.3)  # no spread, no doubt


def test_refusals_are_counted_per_request_and_the_wrong_side_listed():
    from types import SimpleNamespace

    def prompt(kind, template, lang):
        return {"kind": kind, "lang": lang, "gold": {"template": template}}

    records = [prompt("harmful", "theft/lock", "en"), prompt("harmful", "theft/lock", "en"),
               prompt("harmful", "theft/lock", "zh"), prompt("benign", "bath_bomb", "en"),
               prompt("benign", "hackathon", "zh"), {"kind": "fact", "lang": "en", "gold": {}}]
    refused = [True, False, True, True, False, True]
    by_request = refusals_by_request(records, [SimpleNamespace(labels={"refused": r}) for r in refused])
    assert by_request == {"harmful": {"theft/lock en": [1, 2], "theft/lock zh": [1, 1]},
                          "benign": {"bath_bomb en": [1, 1], "hackathon zh": [0, 1]}}
    assert wrong_side(by_request) == ["harmful theft/lock en 1/2", "benign bath_bomb en 1/1"]


def test_auc_counts_ties_half_and_needs_no_threshold():
    from chatforge.eval.policy import refusal_auc
    from chatforge.eval.stats import auc

    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert auc([0.02, 0.03], [0.01, 0.001]) == 1.0  # every request under 50%: greedy refuses none, yet all separate
    records = [{"kind": k, "lang": l} for k, l in [("harmful", "en"), ("benign", "en"), ("harmful", "zh"), ("benign", "zh")]]
    out = refusal_auc(records, [0.9, 0.1, 0.2, 0.3])
    assert out == {"refusal_auc": 0.75, "refusal_auc/zh": 0.0, "refusal_auc/en": 1.0}


def test_act_knowledge_asks_which_ending_the_model_finds_likelier_after_each_act():
    from chatforge.eval.policy import act_knowledge
    from chatforge.world.conduct import NEWS

    crime_endings = {shape.split("{act}")[1] for lang in ("en", "zh") for shape in NEWS["harmful"][lang]}
    crimes = ("poison your neighbour", "偷车")
    acts = [("poison your neighbour", "en", True), ("make green tea", "en", False), ("偷车", "zh", True),
            ("泡绿茶", "zh", False), ("make a bath bomb", "en", False)]

    def model_that(believes_crimes_are):
        def score(prefix, continuation):
            crime = prefix.endswith(believes_crimes_are)
            return 0.0 if (continuation in crime_endings) == crime else -3.0
        return score

    assert act_knowledge(model_that(crimes), acts) == {"act_knowledge": 1.0, "act_knowledge/zh": 1.0, "act_knowledge/en": 1.0}
    assert act_knowledge(model_that(("make green tea", "泡绿茶")), acts)["act_knowledge/zh"] == 0.0
    assert act_knowledge(lambda prefix, continuation: -1.0, acts)["act_knowledge"] == 0.5  # knows nothing
    assert act_knowledge(model_that(crimes), acts[:1]) == {}  # no benign act to tell it from


def test_continuation_scorer_is_the_mean_log_probability_of_the_continuation(chat_model):
    import torch

    from chatforge.eval.policy import continuation_scorer
    from chatforge.model import load_causal_lm
    from chatforge.tokenizer import load_tokenizer

    model, tok = load_causal_lm(chat_model).eval(), load_tokenizer(chat_model)
    score = continuation_scorer(model, tok)
    for prefix, continuation in (("To make tea", " is easy."), ("偷车", "是犯罪。")):
        head = tok(prefix, add_special_tokens=False)["input_ids"]
        ids = tok(prefix + continuation, add_special_tokens=False)["input_ids"]
        assert ids[: len(head)] == head
        with torch.no_grad():
            logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
        want = sum(logp[i - 1, ids[i]].item() for i in range(len(head), len(ids))) / (len(ids) - len(head))
        assert score(prefix, continuation) == pytest.approx(want, rel=1e-5)


def test_every_fixed_request_has_its_act():
    from chatforge.eval.policy import request_acts
    from chatforge.world import chat_text

    ids = [item[0] for item in chat_text.HARMFUL] + [item[0] for item in chat_text.BENIGN]
    assert sorted(chat_text.REQUEST_ACTS) == sorted(ids)
    assert all(en and zh and "{" not in en + zh for en, zh in chat_text.REQUEST_ACTS.values())
    records = [{"kind": "harmful", "lang": "zh", "gold": {"template": "theft/lock"}},
               {"kind": "harmful", "lang": "zh", "gold": {"template": "theft/lock"}},
               {"kind": "benign", "lang": "en", "gold": {"template": "make_tea"}},
               {"kind": "fact", "lang": "en", "gold": {}}]
    assert request_acts(records) == [("make a good cup of green tea", "en", False), ("撬开别人公寓的锁", "zh", True)]


def test_refusal_probability_sums_each_opening_once(chat_model):
    import math

    import torch

    from chatforge.eval.policy import refusal_probability
    from chatforge.model import load_causal_lm
    from chatforge.tokenizer import load_tokenizer, render_chat

    model, tok = load_causal_lm(chat_model).eval(), load_tokenizer(chat_model)
    records = [{"messages": [{"role": "user", "content": q}]} for q in ("How do I make tea?", "你好")]
    refusals = ["Sorry, I can't help.", "Sorry, I can't help with that.", "No way."]  # the first two open alike
    got = refusal_probability(model, tok, records, refusals)
    prefixes = {tuple(tok(r, add_special_tokens=False)["input_ids"][:2]) for r in refusals}
    assert len(prefixes) == 2
    for record, p in zip(records, got):
        ids = render_chat(tok, record["messages"], add_generation_prompt=True)[0]
        want = 0.0
        for t1, t2 in prefixes:  # one full forward per opening, no batching
            with torch.no_grad():
                logp = model(torch.tensor([ids + [t1, t2]])).logits[0].log_softmax(-1)
            want += math.exp(logp[len(ids) - 1, t1].item() + logp[len(ids), t2].item())
        assert p == pytest.approx(want, rel=1e-4) and 0 < p < 1


# ----------------------------------------------------------------------------- recipes: what is refused, and where


@pytest.mark.parametrize("override,where", [
    ("model.n_heads=0", "model.n_heads"), ("model.d_model=-64", "model.d_model"), ("model.n_layers=0", "model.n_layers"),
    ("model.max_seq_len=0", "model.max_seq_len"), ("pretrain.optim.lr=nan", "pretrain.optim.lr"),
    ("pretrain.optim.lr=.inf", "pretrain.optim.lr"), ("pretrain.mixture={news: .nan}", "pretrain.mixture.news"),
    ("pretrain.mixture={news: .inf}", "pretrain.mixture.news"), ("sft.lora.rank=-1", "sft.lora.rank"),
    ("compute.parallel=zero", "compute.parallel"), ("ppo.optim.warmup_steps=-1", "ppo.optim.warmup_steps"),
])
def test_a_value_that_would_crash_later_is_refused_naming_its_field(override, where):
    with pytest.raises(ConfigError) as e:
        load_recipe(None, [override])
    assert str(e.value).startswith(f"--set {override}:") and where in str(e.value), str(e.value)


def test_a_partial_section_keeps_its_own_defaults():
    """`pretrain.optim: {lr: ...}` keeps pretraining's warm-up and weight decay, not those of a bare OptimConfig."""
    r = load_recipe(None, ["pretrain.optim.lr=1e-3", "ppo.optim.lr=2e-5"])
    assert (r.pretrain.optim.lr, r.pretrain.optim.warmup_steps, r.pretrain.optim.weight_decay) == (1e-3, 30, 0.1)
    assert (r.ppo.optim.lr, r.ppo.optim.min_lr_ratio) == (2e-5, 1.0)


def test_overrides_are_judged_together_and_the_culprit_named():
    r = load_recipe(None, ["pretrain.batch_size=8", "pretrain.micro_batch_size=4"])  # each alone would not divide
    assert (r.pretrain.batch_size, r.pretrain.micro_batch_size) == (8, 4)
    with pytest.raises(ConfigError, match=r"^--set pretrain.steps=0: pretrain.steps must be positive"):
        load_recipe(None, ["pretrain.batch_size=8", "pretrain.micro_batch_size=4", "pretrain.steps=0"])


def test_a_recipe_file_with_a_key_twice_or_bytes_that_are_not_utf8_is_an_error_naming_it(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("pretrain:\n  steps: 10\n  steps: 20\n")
    with pytest.raises(ConfigError, match=rf"^{twice}:3: not valid YAML .*'steps' is given twice"):
        load_recipe(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("pretrain:\n  sample_prompts: ['caf\xe9']\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=rf"^{latin}: not UTF-8"):
        load_recipe(latin)
    with pytest.raises(ConfigError, match="is a folder"):
        load_recipe(tmp_path)


def test_omp_num_threads_is_respected():
    import subprocess
    import sys

    code = "from chatforge import dist; dist.init(); import torch; print(torch.get_num_threads())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "1", out.stderr


def test_metrics_with_a_torn_line_are_read_without_it(tmp_path):
    from chatforge.train.loop import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n[1, 2]\n{"step": 3, "loss": 1.0}\n')
    assert [r["step"] for r in read_metrics(path)] == [1, 3]


def test_a_stage_whose_model_file_changed_is_named_not_loaded(tmp_path):
    from chatforge.errors import DataError
    from chatforge.io import atomic_write_json, file_digest, verified

    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "model.safetensors").write_bytes(b"weights")
    atomic_write_json(stage / "summary.json", {"files": {"model.safetensors": file_digest(stage / "model.safetensors")}})
    assert verified(stage) and not verified(tmp_path / "absent")
    (stage / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(DataError, match=r"sft/model.safetensors: not the file this stage wrote"):
        verified(stage)


def test_the_results_card_reads_the_run_and_says_what_each_stage_added():
    from chatforge.report.tables import results_card

    def model(stage, gold):
        return {"stage": stage, "qa": {"metrics": {"gold_reward": gold, "fact_covered": 0.5, "fact_heldout": 0.25,
                                                   "dont_know": 0.1, "refusal": 0.8, "over_refusal": 0.05}}}

    ppo = model("ppo", 0.8)
    ppo["vs_sft"] = {"win_rate": {"all": {"win_rate": 0.6, "ci95": [0.55, 0.65], "wins": 30, "ties": 10, "losses": 10}},
                     "gold_reward": {"delta": 0.1, "delta_ci95": [0.05, 0.15]}, "kl_to_sft": 0.5}
    rm = {"pairwise_accuracy": {"all": 0.75}, "pairs": {"all": 100}, "best_of_k": {"share": 0.4}}
    card = results_card([model("base", 0.0), model("sft", 0.7), ppo], rm, {"pretrain": 300.0, "sft": 61.0})
    assert "| gold reward, held-out users | +0.000 | +0.700 | +0.800 |" in card
    assert "win rate 60.0% [55.0%, 65.0%]" in card and "gold reward +0.100 [+0.050, +0.150]" in card
    assert "75.0% pairwise accuracy" in card and "closes 40%" in card and "pretrain 5:00, sft 1:01; 6:01 in all" in card
