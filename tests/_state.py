"""Snapshots of everything occlens promises not to change: a model's state and a tensor's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


@dataclass
class ModelState:
    tensors: dict[str, bytes]
    requires_grad: dict[str, bool]
    grads: dict[str, bool]
    training: dict[str, bool]
    hooks: dict[str, tuple[int, ...]]
    tree: list[tuple[str, str]]
    global_hooks: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ModelState:
        return cls(
            tensors={k: v.detach().cpu().numpy().tobytes() for k, v in model.state_dict().items()},
            requires_grad={k: p.requires_grad for k, p in model.named_parameters()},
            grads={k: p.grad is not None for k, p in model.named_parameters()},
            training={k: m.training for k, m in model.named_modules()},
            hooks={
                k: tuple(len(getattr(m, d, {}) or {}) for d in _HOOK_DICTS)
                for k, m in model.named_modules()
            },
            tree=[(k, type(m).__name__) for k, m in model.named_modules()],
            global_hooks=_global_hook_counts(),
        )


def _global_hook_counts() -> tuple[int, ...]:
    from torch.nn.modules import module as module_mod

    names = [n for n in dir(module_mod) if n.startswith("_global_") and n.endswith("hooks")]
    return tuple(len(getattr(module_mod, n)) for n in sorted(names))


def tensor_state(x: torch.Tensor) -> tuple:
    return (x.detach().cpu().numpy().tobytes(), x.shape, x.dtype, x.requires_grad, x.grad is None)


def assert_untouched(model: nn.Module, before: ModelState) -> None:
    after = ModelState.of(model)
    assert after.tensors == before.tensors, "parameters or buffers changed"
    assert after.requires_grad == before.requires_grad, "requires_grad flags changed"
    assert after.grads == before.grads, ".grad fields changed"
    assert after.training == before.training, "train/eval flags changed"
    assert after.hooks == before.hooks, "hooks were left on the model"
    assert after.tree == before.tree, "the module tree changed"
    assert after.global_hooks == before.global_hooks, "global module hooks were left behind"
