"""PEFT round trip: an adapter saved by engine_py loads with peft onto the
transformers model and gives the same choice log-likelihoods (1e-4), and an
adapter made and saved by peft loads into engine_py with the same result."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from llm_fixtures import write_tiny_llm  # noqa: E402

from engine_py.finetune import Trainer  # noqa: E402

PROMPTS = ["the cat is", "a bird can", "Question: what is two plus two? Answer:"]
CHOICES = [" black", " fly", " four and more"]


def _torch_choice_logprobs(model, tr):
    out = np.zeros((len(PROMPTS), len(CHOICES)))
    for i, p in enumerate(PROMPTS):
        for j, c in enumerate(CHOICES):
            seqs, starts = tr._pairs([p], [c])
            s = seqs[0]
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor(s[None])).logits[0].double(), -1)
            out[i, j] = sum(float(logp[t - 1, s[t]]) for t in range(starts[0], len(s)))
    return out


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("peft" + request.param), request.param,
                          gguf_types=("F32",), layers=2)


def _base(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32).eval()


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_engine_adapter_loads_in_peft(tiny, tmp_path, source):
    path = tiny.hf_dir if source == "hf" else tiny.gguf["F32"]
    tr = Trainer(path, r=2, alpha=4, targets=("q", "k", "v", "o", "gate", "up", "down"),
                 lr=2e-2, batch_size=3, epochs=3, seed=1, show_progress_bar=False)
    tr.fit(PROMPTS, [" black", " fly", " four"])
    tr.save_adapter(tmp_path / "ad")
    model = peft.PeftModel.from_pretrained(_base(tiny), str(tmp_path / "ad")).eval()
    ref = _torch_choice_logprobs(model, tr)
    base = _torch_choice_logprobs(_base(tiny), tr)
    ours = tr.choice_logprobs(PROMPTS, CHOICES)
    assert np.abs(ref - base).max() > 1e-2  # the adapter changes something
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (ours, ref)


def test_peft_adapter_loads_in_engine(tiny, tmp_path):
    cfg = peft.LoraConfig(r=3, lora_alpha=6, lora_dropout=0.0,
                          target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(_base(tiny), cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(str(tmp_path / "pa"))
    tr = Trainer.load(tiny.gguf["F32"], tmp_path / "pa")
    assert tr.r == 3 and tr.alpha == 6 and set(tr.targets) == {"q", "v", "up", "down"}
    ref = _torch_choice_logprobs(model.eval(), tr)
    ours = tr.choice_logprobs(PROMPTS, CHOICES)
    assert np.abs(ours - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (ours, ref)
