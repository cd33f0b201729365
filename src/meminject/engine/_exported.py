"""An exported injection as a Python object: load it, apply it to a plain transformers model.

Example (any ``AutoModelForCausalLM`` of the exported checkpoint; ``model.generate`` works inside)::

    from meminject import Injection
    injection = Injection.load("outputs/export/demo-rank1")
    with injection.applied(model, tokenizer, memory="George Washington"):
        out = model.generate(**tokenizer("The first president ...", return_tensors="pt"))
    table = injection.evaluate(prompts, memories, answers)   # P(answer) per prompt (model=...: yours)
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..core._errors import ConfigError, ModelError
from ._injection_file import InjectionRecord, read_record, weights_fingerprint
from ._plain import add_hook, plain_memory_vector, token_ids

__all__ = ["Injection"]


class Injection:
    """One exported injection (``injection.json``), applicable to a plain Hugging Face model."""

    def __init__(self, record: InjectionRecord, folder: Path | None = None):
        self.record = record
        self.folder = folder
        self._checked: set[int] = set()  # models whose fingerprint was checked (by id)
        self.mismatch: str | None = None  # set when a differing model was used on purpose

    @classmethod
    def load(cls, folder: str | Path) -> "Injection":
        """The export in ``folder`` (every field checked: :func:`read_record`)."""
        return cls(read_record(folder), Path(folder))

    def __repr__(self) -> str:
        return f"Injection({self.record.label}, study {self.record.study.get('name')} trial {self.record.study.get('trial')})"

    # ------------------------------------------------------------ the model
    def check_model(self, model: Any, *, allow_mismatch: bool = False) -> None:
        """Refuse a model whose weights are not the exported checkpoint's (``allow_mismatch``: go on,
        and :attr:`mismatch` says what differed)."""
        rec = self.record.model
        if rec.weights == "paper":
            raise ModelError(
                f"this injection was found on {rec.name} with TransformerLens-processed weights (model.weights=paper), "
                "which plain transformers does not hold; apply it with meminject apply, or export a sweep run with model.weights=raw"
            )
        if id(model) in self._checked:
            return
        found = weights_fingerprint(model)
        if found != rec.fingerprint:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            line = f"model {name!r} ({type(model).__name__}, weights {found[:19]}…) is not {rec.name} ({rec.architecture}, weights {rec.fingerprint[:19]}…), the model this injection was exported from"
            if not allow_mismatch:
                raise ModelError(
                    line + "; pass allow_mismatch=True (CLI: allow_model_mismatch=true) to apply it anyway"
                )
            self.mismatch = line
        self._checked.add(id(model))

    # ------------------------------------------------------------ applying it
    @contextlib.contextmanager
    def applied(
        self, model: Any, tokenizer: Any, memory: str | Sequence[str], *, allow_mismatch: bool = False
    ) -> Iterator[None]:
        """τ·v added to ``model`` while inside (hooks on its modules, removed on exit, also on error).

        ``memory``: the memory text (one for every row of a batch), or one text per row.
        ``positions=last`` adds it at the last position of each forward: the prompt's last token,
        then (in ``model.generate`` with a cache) each new token."""
        self.check_model(model, allow_mismatch=allow_mismatch)
        texts = [memory] if isinstance(memory, str) else list(memory)
        vectors = torch.stack([plain_memory_vector(model, tokenizer, self.record, t) for t in texts])  # (n, d_model)
        rec = self.record
        with add_hook(model, rec.hook, rec.layer, lambda: vectors[:, None, :], rec.tau, rec.positions):
            yield

    def _ids(self, tokenizer: Any, text: str, *, bos: bool) -> list[int]:
        return token_ids(
            tokenizer, text, bos=bos and self.record.model.prepend_bos, bos_id=self.record.model.bos_token_id
        )

    def next_token_probs(self, model: Any, tokenizer: Any, prompt: str, memory: str | None) -> torch.Tensor:
        """P(next token | prompt) over the vocabulary, with the memory injected (None: clean)."""
        ids = torch.tensor([self._ids(tokenizer, prompt, bos=True)], device=model.device)
        injected = self.applied(model, tokenizer, memory) if memory is not None else contextlib.nullcontext()
        with injected, torch.no_grad():
            logits = model(ids).logits[0, -1].float()
        return torch.softmax(logits, dim=-1)

    def plain_model(self) -> tuple[Any, Any]:
        """(model, tokenizer): the exported checkpoint, loaded by plain transformers in float32."""
        from ..config import load_run_config
        from ._plain import plain_model

        return plain_model(load_run_config([*self.record.model.overrides, "model.weights=raw"]).model)

    def _model(self, model: Any, tokenizer: Any) -> tuple[Any, Any]:
        if model is None:
            return self.plain_model()
        if tokenizer is None:
            raise ConfigError("a model was given without its tokenizer")
        return model, tokenizer

    def evaluate(
        self,
        prompts: Sequence[str],
        memories: Sequence[str],
        answers: Sequence[str],
        *,
        model: Any = None,
        tokenizer: Any = None,
        allow_mismatch: bool = False,
    ):
        """Per prompt (one at a time): P(answer's first token) before and after, their gain, as ``meminject eval``'s
        columns ``answer_prob_before``, ``answer_prob_after``, ``gain``."""
        import pandas as pd

        if not len(prompts) == len(memories) == len(answers):
            raise ConfigError(
                f"prompts, memories and answers differ in length ({len(prompts)}, {len(memories)}, {len(answers)})"
            )
        model, tokenizer = self._model(model, tokenizer)
        self.check_model(model, allow_mismatch=allow_mismatch)
        rows = []
        for prompt, memory, answer in zip(prompts, memories, answers):
            target = self._ids(tokenizer, answer, bos=False)
            if not target:
                raise ConfigError(f"answer {answer!r} tokenizes to nothing")
            before = self.next_token_probs(model, tokenizer, prompt, None)[target[0]].item()
            after = self.next_token_probs(model, tokenizer, prompt, memory)[target[0]].item()
            rows.append(
                {
                    "prompt": prompt,
                    "memory": memory,
                    "answer": answer,
                    "answer_prob_before": before,
                    "answer_prob_after": after,
                }
            )
        table = pd.DataFrame(rows)
        table["gain"] = table["answer_prob_after"] - table["answer_prob_before"]
        return table

    def generate(
        self,
        prompt: str,
        memory: str,
        *,
        model: Any = None,
        tokenizer: Any = None,
        max_new_tokens: int = 20,
        sample: bool = False,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 5,
        answer: str | None = None,
    ) -> dict[str, Any]:
        """The continuation without and with the injection (greedy, or sampled with ``seed``), the
        top-k next tokens before and after, and P(answer) before and after when ``answer`` is given."""
        model, tokenizer = self._model(model, tokenizer)
        ids = torch.tensor([self._ids(tokenizer, prompt, bos=True)], device=model.device)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        settings = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(sample), "pad_token_id": pad}
        if sample:
            settings["temperature"] = float(temperature)
        else:
            settings.update(temperature=None, top_p=None, top_k=None)
        out: dict[str, Any] = {"prompt": prompt, "memory": memory}
        for side, context in (("before", contextlib.nullcontext()), ("after", self.applied(model, tokenizer, memory))):
            with context:
                torch.manual_seed(int(seed))
                with torch.no_grad():
                    tokens = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
            out[f"continuation_{side}"] = tokenizer.decode(tokens[0, ids.shape[1] :], skip_special_tokens=True)
        for side, mem in (("before", None), ("after", memory)):
            probs = self.next_token_probs(model, tokenizer, prompt, mem)
            top = torch.topk(probs, int(top_k))
            out[f"top_{side}"] = [(tokenizer.decode([int(i)]), float(p)) for p, i in zip(top.values, top.indices)]
            if answer is not None:
                target = self._ids(tokenizer, answer, bos=False)
                out[f"answer_prob_{side}"] = float(probs[target[0]]) if target else float("nan")
        if answer is not None:
            out["answer"] = answer
        return out
