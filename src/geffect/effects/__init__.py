"""The G-effect engine (DESIGN section 3): e(D) = grad R(D) . grad L_u, per tensor, layer, group, item, token.

layout = discover_layout(model)                      # tensors -> layer, group (embed/shallow/.../other)
effect = ghost_effect(model, layout, batches, G, tokens=True)   # per tensor, item and token
effect.breakdown.to_json()                           # {"total", "groups", "layers"}
first_order_check(model, loss_fn, {"forget": batches}, eta=1e-5)
GEffectTracker(TrackerConfig(...))                   # in-run StepCallback -> RUN/geffect.jsonl
"""

from geffect.effects.blocks import GROUPS, ParameterLayout, TensorInfo, discover_layout, find_decoder_layers
from geffect.effects.config import TrackerConfig
from geffect.effects.dots import Breakdown, param_grads, reduce_partials, tensor_dots
from geffect.effects.engine import SetEffect, ghost_effect, gradient_effect, total_tokens
from geffect.effects.estimators import ESTIMATORS, GradientEma
from geffect.effects.ghost import GhostRecorder
from geffect.effects.tokens import token_effects
from geffect.effects.tracker import GEffectTracker
from geffect.effects.validate import FirstOrderResult, first_order_check

__all__ = [
    "Breakdown",
    "ESTIMATORS",
    "FirstOrderResult",
    "GEffectTracker",
    "GROUPS",
    "GhostRecorder",
    "GradientEma",
    "ParameterLayout",
    "SetEffect",
    "TensorInfo",
    "TrackerConfig",
    "discover_layout",
    "find_decoder_layers",
    "first_order_check",
    "ghost_effect",
    "gradient_effect",
    "param_grads",
    "reduce_partials",
    "tensor_dots",
    "token_effects",
    "total_tokens",
]
