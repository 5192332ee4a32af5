"""Locked causality proof of the autoresearch experiment: a handed-over model is causal by construction.

OWNED BY THE HUMAN who runs the loop; the agent must never edit it. The evaluator (evaluate.py) runs it on the
exported graph before any forward pass: `check(program)` returns, or raises NotCausal saying which operation
cannot be shown causal and the source line it came from.

The graph is read as data flow. A tensor that depends on the tokens carries where its positions lie (Seq), or
it is a matrix of scores between positions (Pair); any other tensor depends on no token, and its value may be
computed (a mask, a bias table) to see what it covers. Operations that act position by position keep a Seq;
operations that mix positions are allowed only in their causal forms: attention with is_causal=True or a mask
of -inf above the diagonal (as a bool or an additive mask, masked_fill or where), scores zeroed above the
diagonal (tril) before they weight values, cumulative sums, slices and left padding that delay, 1-d
convolutions whose padding keeps them causal. Each Seq counts how far ahead it may look (lag); the logits must
end with lag <= 0 at every position. Anything else that mixes positions, or that the check does not know,
refuses the model: a peek at one position in a thousand, or only after one token, or only in some rows, is an
operation in the graph all the same. What this does not cover: rows of a batch mixing (the evaluator's probes
check that), and operations reading the tokens through values (not positions) in ways no operation shows.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch


class NotCausal(Exception):
    """The model cannot be shown causal; the message says which operation, for the agent."""


@dataclasses.dataclass(frozen=True)
class Seq:
    """Positions along `dim`, the middle factor of that dim (outer x T x inner; plain: 1 x T x 1); position t
    depends on tokens up to t + lag."""

    dim: int
    outer: int = 1
    inner: int = 1
    lag: int = 0
    origin: str = dataclasses.field(default="", compare=False)  # where it first looked ahead (lag > 0)

    @property
    def plain(self) -> bool:
        return self.outer == 1 and self.inner == 1


@dataclasses.dataclass(frozen=True)
class Pair:
    """Scores of query positions (dim q) for key positions (dim k): 'open' (a query may see later keys),
    'masked' (later keys are -inf and depend on no token) or 'zeroed' (later keys are 0, on no token)."""

    q: int
    k: int
    state: str
    lag: int = 0


POISON = "poison"  # an output of an operation the check does not follow: using it refuses the model
POINTWISE = {
    "abs", "add", "sub", "rsub", "mul", "div", "neg", "pow", "exp", "exp2", "expm1", "log", "log1p", "log2",
    "sqrt", "rsqrt", "reciprocal", "square", "sin", "cos", "tan", "tanh", "sigmoid", "relu", "gelu", "silu",
    "mish", "elu", "leaky_relu", "hardtanh", "softplus", "erf", "sign", "clamp", "clamp_min", "clamp_max",
    "maximum", "minimum", "where", "masked_fill", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_not", "bitwise_and", "bitwise_or", "floor", "ceil", "round", "trunc", "fmod",
    "remainder", "lerp", "addcmul", "addcdiv", "to", "_to_copy", "type_as", "clone", "contiguous", "alias",
    "detach", "lift_fresh_copy", "dropout", "copy", "_native_batch_norm_legit_no_training", "hardswish",
    "hardsigmoid", "relu6", "threshold", "atan", "atan2", "floor_divide", "true_divide", "fill", "zeros_like",
    "ones_like", "full_like", "empty_like", "bitwise_xor",
}  # fmt: skip
KEEPS_ZERO = {"mul", "div", "to", "_to_copy", "type_as", "clone", "contiguous", "alias", "detach", "dropout"}
KEEPS_MASK = {"to", "_to_copy", "type_as", "clone", "contiguous", "alias", "detach", "dropout"}
REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std", "var_mean", "std_mean",
              "logsumexp", "prod", "any", "all", "norm", "linalg_vector_norm", "nansum", "count_nonzero"}  # fmt: skip
CUMULATIVE = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"}
SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"}
GATHERS = {"roll", "flip", "index_select", "gather", "take_along_dim", "scatter", "scatter_add", "index_add",
           "index_copy", "slice_scatter", "select_scatter", "index_put", "masked_scatter", "diagonal"}  # fmt: skip
ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math"}  # fmt: skip


def check(program: Any) -> None:
    """Return if the exported program's logits are causal by construction; else raise NotCausal naming the
    operation that cannot be shown causal and its source line."""
    inputs = set(program.graph_signature.user_inputs)
    seeds = {n: (Seq(1) if n.name in inputs else None) for n in program.graph.nodes if n.op == "placeholder"}
    outputs = _run(program.graph, seeds, program)
    out = outputs[0] if outputs else None
    if isinstance(out, Pair) or out == POISON or (isinstance(out, Seq) and not (out.dim == 1 and out.plain)):
        raise NotCausal(_said("its logits are not laid out position by position", None))
    if isinstance(out, Seq) and out.lag > 0:
        raise NotCausal(
            _said(f"the logits at position t depend on the token at t + {out.lag}, from {out.origin}", None)
        )


def _run(graph: Any, seeds: dict[Any, Any], program: Any) -> list[Any]:
    """Follow one graph (the program's, or a higher-order operation's subgraph) from its placeholders' values."""
    env: dict[Any, Any] = dict(seeds)
    for node in graph.nodes:
        try:
            if node.op == "call_function":
                env[node] = _flow(node, env, program)
            elif node.op == "get_attr":
                env[node] = None  # a constant, or a subgraph
            elif node.op == "output":
                found = node.args[0]
                return [_value(v, env) for v in (found if isinstance(found, (list, tuple)) else [found])]
        except NotCausal as exc:
            raise NotCausal(_said(str(exc), node)) from None
        except Exception as exc:  # a form of an operation this check does not know: not shown causal
            raise NotCausal(_said(f"the check could not follow {node.target} ({type(exc).__name__}: {exc})", node)
                            ) from None  # fmt: skip
    return []


def _said(what: str, node: Any) -> str:
    if what.startswith("the model must be causal"):
        return what  # said already, in a subgraph
    where = f" ({_where(node)})" if node is not None else ""
    return (
        f"the model must be causal, and its graph cannot be shown so: {what}{where}; only operations that act "
        "position by position, attention with is_causal=True or a mask of -inf above the diagonal, cumulative "
        "sums and left padding may mix positions"
    )


def _higher_order(node: Any, env: dict[Any, Any], program: Any) -> Any:
    """A region run under autocast or with gradients off: its subgraph, followed with the operands' values."""
    at = next(i for i, a in enumerate(node.args) if getattr(a, "op", None) == "get_attr")
    sub = getattr(program.graph_module, node.args[at].target)
    holders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    values = [_value(a, env) for a in node.args[at + 1 :]]
    outputs = _run(sub.graph, dict(zip(holders, values, strict=True)), _NoConstants())
    return outputs if len(outputs) != 1 or isinstance(node.meta.get("val"), (list, tuple)) else outputs[0]


class _NoConstants:
    """A subgraph's static values are not computed: a mask inside one is not shown to cover the future."""

    graph_signature = None


def _where(node: Any) -> str:
    """The operation and the line of the model's own code that made it (the innermost frame outside torch)."""
    lines = [line.strip() for line in str(node.meta.get("stack_trace") or "").splitlines() if line.strip()]
    frames = [(lines[i], lines[i + 1]) for i in range(len(lines) - 1) if lines[i].startswith("File")]
    own = [f for f in frames if "site-packages" not in f[0] and "/torch/" not in f[0]] or frames
    return f"operation {node.name}" + (f", {own[-1][0][:120]}: {own[-1][1][:100]}" if own else "")


def _value(arg: Any, env: dict[Any, Any]) -> Any:
    if hasattr(arg, "op"):
        value = env.get(arg)
        if value == POISON:
            raise NotCausal(f"it uses an output of {arg.name} that the check does not follow")
        return value
    if isinstance(arg, (list, tuple)):
        return [_value(a, env) for a in arg]
    return None


def _shape(arg: Any) -> tuple[int, ...]:
    value = arg.meta.get("val") if hasattr(arg, "meta") else None
    return tuple(_size(s) for s in getattr(value, "shape", ()))


SYMBOLIC_SIZE = 7919  # a dynamic dimension (an archive exported for any batch) stands for this prime


def _size(dim: Any) -> int:
    if isinstance(dim, int):
        return dim
    expr = dim.node.expr  # a shape expression of the export's symbols (s0, s0*512, ...)
    return int(expr.subs({symbol: SYMBOLIC_SIZE for symbol in expr.free_symbols}))


def _args(node: Any) -> dict[str, Any]:
    """The call's arguments by their schema names."""
    schema = node.target._schema
    named = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    named.update({a.name: v for a, v in zip(schema.arguments, node.args, strict=False)})
    named.update(node.kwargs)
    return named


def _flow(node: Any, env: dict[Any, Any], program: Any) -> Any:
    if node.target is operator.getitem:  # one output of several
        value = env.get(node.args[0])
        return value[node.args[1]] if isinstance(value, list) else value
    if isinstance(node.target, torch._ops.HigherOrderOperator):
        if node.target.name() in ("wrap_with_autocast", "wrap_with_set_grad_enabled"):
            return _higher_order(node, env, program)
        raise NotCausal(f"{node.target.name()} is an operation the check does not follow")
    values = [_value(a, env) for a in [*node.args, *node.kwargs.values()]]
    schema = getattr(node.target, "_schema", None)
    if not any(_dynamic(v) for v in values) or (schema is not None and not schema.returns):
        return None  # depends on no token, or returns nothing (an assertion on metadata)
    name = node.target._overloadpacket.__name__ if hasattr(node.target, "_overloadpacket") else str(node.target)
    base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
    result = _rule(base, node, env, program)
    if isinstance(result, Seq) and result.lag > 0 and not result.origin:
        result = dataclasses.replace(result, origin=_where(node))
    mutated = schema.arguments[0] if schema is not None and schema.arguments else None
    if mutated is not None and mutated.alias_info is not None and mutated.alias_info.is_write:
        target = node.args[0]  # an in-place write: the written tensor now holds the result
        if result == env.get(target):
            return result  # its positions depend on what they did (tanh_, mul_ by a constant): views stay true
        if _is_view(target) or any(_is_view(user) for user in target.users if user is not node):
            raise NotCausal(f"{name} writes in place into a tensor that has views")
        env[target] = result
    return result


def _dynamic(value: Any) -> bool:
    if isinstance(value, list):
        return any(_dynamic(v) for v in value)
    return value is not None


def _is_view(node: Any) -> bool:
    schema = getattr(getattr(node, "target", None), "_schema", None)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _rule(name: str, node: Any, env: dict[Any, Any], program: Any) -> Any:
    a = _args(node)
    out = _shape(node)
    first = node.args[0]
    x = _value(first, env) if hasattr(first, "op") else None
    ndim = len(_shape(first)) if hasattr(first, "op") else 0
    if name in ("sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "size", "numel", "dim"):
        return None  # a shape, not a value: it depends on no token
    if name in POINTWISE:
        return _pointwise(name, node, env, out, program)
    if name in ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as", "squeeze",
                "unsqueeze", "expand", "expand_as", "broadcast_to", "permute", "transpose", "t", "movedim",
                "swapaxes"):  # fmt: skip
        return _layout(name, a, x, _shape(first), out)
    if name in ("slice", "narrow"):
        return _slice(x, _dim(a["dim"], ndim), a.get("start"), a.get("end") if name == "slice" else None,
                      a.get("step", 1), _shape(first))  # fmt: skip
    if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
        return _split(name, x, node, env, _dim(a.get("dim", 0), ndim))
    if name == "select":
        return _drop_dim(x, _dim(a["dim"], ndim), "picks one position")
    if name in ("cat", "concat", "stack"):
        return _cat(name, node, env, a)
    if name in ("constant_pad_nd", "pad"):
        return _pad(x, a["pad"], ndim)
    if name in GATHERS:
        return _gather(name, a, x, node, env, ndim)
    if name == "one_hot":
        return x if isinstance(x, Seq) else _refuse(name)
    if name == "embedding":
        if _dynamic(_value(a["weight"], env)):
            raise NotCausal("embedding of a token-dependent table")
        return _value(a["indices"], env)
    if name in ("repeat", "tile", "repeat_interleave"):
        return _repeat(name, a, x, _shape(first), _shape(node))
    if name in ("topk", "sort", "argsort", "kthvalue", "mode", "median", "nanmedian"):
        dim = _dim(a.get("dim", -1), ndim)
        if not isinstance(x, Seq) or dim == x.dim:
            raise NotCausal(f"{name} over the positions")
        val = node.meta.get("val")
        return [x] * len(val) if isinstance(val, (list, tuple)) else x
    if name in CUMULATIVE:
        return x if isinstance(x, Seq) else _refuse(name)
    if name in SOFTMAX:
        return _softmax(name, x, _dim(a["dim"], ndim))
    if name in ("tril", "triu"):
        if isinstance(x, Pair) and name == "tril" and a.get("diagonal", 0) <= 0:
            return Pair(x.q, x.k, "zeroed", x.lag)
        return _refuse(name) if isinstance(x, Pair) else x
    if name in REDUCTIONS:
        return _reduce(name, a, x, ndim, node)
    if name in ("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"):
        shape = a["normalized_shape"]
        if not isinstance(x, Seq) or x.dim >= ndim - len(shape):
            raise NotCausal(f"{name} normalises over the positions")
        return [x, x, x] if name == "native_layer_norm" else (x if name != "_fused_rms_norm" else [x, x])
    if name in ("linear", "mm", "bmm", "matmul", "addmm", "baddbmm", "einsum", "dot", "mv"):
        return _contract(name, node, env, a)
    if name in ATTENTION:
        return _attention(name, node, env, a, program)
    if name in ("convolution", "conv1d", "_convolution"):
        return _conv(a, x, ndim, node, env)
    return _refuse(name)


def _repeat(name: str, a: dict[str, Any], x: Any, before: tuple[int, ...], out: tuple[int, ...]) -> Any:
    """Copies along dimensions other than the positions (heads shared by several queries, say)."""
    if not isinstance(x, Seq):
        return _refuse(name)
    if name == "repeat_interleave":
        if a.get("dim") is None or _dim(a["dim"], len(before)) == x.dim:
            raise NotCausal(f"{name} along the positions")
        return x
    moved = dataclasses.replace(x, dim=x.dim + len(out) - len(before))
    if out[moved.dim] != before[x.dim]:
        raise NotCausal(f"{name} along the positions")
    return moved


def _refuse(name: str) -> Any:
    raise NotCausal(f"{name} on token-dependent data is an operation the check cannot show causal")


def _dim(d: Any, ndim: int) -> int:
    return int(d) + ndim if int(d) < 0 else int(d)


def _pointwise(name: str, node: Any, env: dict[Any, Any], out: tuple[int, ...], program: Any) -> Any:
    args = [arg for arg in [*node.args, *node.kwargs.values()] if hasattr(arg, "op")]
    values = [_value(arg, env) for arg in args]
    pairs = [v for v in values if isinstance(v, Pair)]
    seqs = [v for v in values if isinstance(v, Seq)]
    if len(pairs) + len(seqs) != sum(_dynamic(v) for v in values):
        raise NotCausal(f"{name} of a tuple")
    if pairs:
        return _pair_pointwise(name, node, env, pairs, seqs, out, program)
    found = None
    for arg, value in zip(args, values, strict=True):
        if not isinstance(value, Seq):
            continue
        moved = dataclasses.replace(value, dim=value.dim + len(out) - len(_shape(arg)))
        if _shape(arg)[value.dim] != out[moved.dim]:
            raise NotCausal(f"{name} broadcasts the positions")
        if found is not None and (found.dim, found.outer, found.inner) != (moved.dim, moved.outer, moved.inner):
            raise NotCausal(f"{name} combines positions that are not aligned")
        found = moved if found is None or moved.lag > found.lag else found  # the one that looks furthest ahead
    return found


def _pair_pointwise(name: str, node: Any, env: dict[Any, Any], pairs: list[Pair], seqs: list[Seq],
                    out: tuple[int, ...], program: Any) -> Pair:  # fmt: skip
    pair = pairs[0]
    if len(pairs) > 1 or len(_shape(next(a for a in node.args if isinstance(env.get(a), Pair)))) != len(out):
        return Pair(pair.q, pair.k, "open", max(p.lag for p in pairs))
    lag = max([pair.lag, *(s.lag for s in seqs)])
    others = [a for a in [*node.args, *node.kwargs.values()] if hasattr(a, "op") and env.get(a) is None]
    scalars = [a for a in node.args[1:] if isinstance(a, (int, float))]
    if seqs:
        return Pair(pair.q, pair.k, "open", lag)
    if name in KEEPS_MASK or (
        name in KEEPS_ZERO and pair.state == "zeroed" and _finite_static(others, scalars, program)
    ):
        return Pair(pair.q, pair.k, pair.state, lag)
    future = _future(node, env, pair, out, program)
    if name == "masked_fill" and future is not None:
        fill = float(node.args[2]) if isinstance(node.args[2], (int, float)) else None
        if future.get("mask") and fill is not None and fill in (-math.inf, 0.0):
            return Pair(pair.q, pair.k, "masked" if fill == -math.inf else "zeroed", lag)
    if name in ("add", "sub") and future is not None and future.get("add") and pair.state in ("open", "masked"):
        return Pair(pair.q, pair.k, "masked", lag)
    if name == "where" and future is not None and future.get("where"):
        return Pair(pair.q, pair.k, future["where"], lag)
    if name in ("mul", "div") and pair.state == "masked" and _positive_static(others, scalars, program):
        return Pair(pair.q, pair.k, "masked", lag)
    return Pair(pair.q, pair.k, "open", lag)


def _future(node: Any, env: dict[Any, Any], pair: Pair, out: tuple[int, ...], program: Any) -> dict[str, Any] | None:
    """For a static operand of node (a mask, a bias, a condition): whether it covers every later key."""
    try:
        t = out[pair.q]
        later = torch.ones(t, out[pair.k], dtype=torch.bool).triu(1)

        def plane(arg: Any) -> torch.Tensor:
            value = torch.as_tensor(_concrete(arg, program)).expand(out)
            return value.movedim((pair.q, pair.k), (-2, -1)).reshape(-1, t, out[pair.k])

        found: dict[str, Any] = {}
        if node.target._overloadpacket.__name__ in ("masked_fill", "masked_fill_"):
            mask = plane(node.args[1])
            found["mask"] = bool(mask[:, later].all())
        elif node.target._overloadpacket.__name__ in ("add", "add_", "sub", "sub_"):
            other = next(a for a in node.args if hasattr(a, "op") and env.get(a) is None)
            bias = plane(other).float()
            sign = -1.0 if node.target._overloadpacket.__name__.startswith("sub") else 1.0
            bias = bias * sign
            found["add"] = bool(
                (bias[:, later] == -math.inf).all() and (bias != math.inf).all() and not bias.isnan().any()
            )
        elif node.target._overloadpacket.__name__ == "where":
            cond, a, b = node.args[0], node.args[1], node.args[2]
            keep = plane(cond)
            other = b if isinstance(env.get(a), Pair) else a
            chosen_later = ~keep[:, later] if isinstance(env.get(a), Pair) else keep[:, later]
            fill = torch.as_tensor(_concrete(other, program) if hasattr(other, "op") else other).float()
            fill = fill.expand(out).movedim((pair.q, pair.k), (-2, -1)).reshape(-1, t, out[pair.k])[:, later]
            if bool(chosen_later.all()) and bool((fill == -math.inf).all()):
                found["where"] = "masked"
            elif bool(chosen_later.all()) and bool((fill == 0).all()):
                found["where"] = "zeroed"
        return found
    except Exception:  # a mask the check cannot evaluate: not shown to cover the future
        return None


def _concrete(arg: Any, program: Any) -> Any:
    """The value of a node that depends on no token: parameters, buffers, constants and what is computed
    from them (a mask built with tril, a bias table)."""
    if not hasattr(arg, "op"):
        return arg
    cache = program.__dict__.setdefault("_autoresearch_concrete", {})
    if arg in cache:
        return cache[arg]
    if arg.op == "placeholder":
        sig = program.graph_signature
        name = sig.inputs_to_parameters.get(arg.name) or sig.inputs_to_buffers.get(arg.name)
        if name is not None:
            value = program.state_dict[name]
        else:
            value = program.constants[sig.inputs_to_lifted_tensor_constants[arg.name]]
    else:
        args = [_concrete_tree(a, program) for a in arg.args]
        kwargs = {k: _concrete_tree(v, program) for k, v in arg.kwargs.items()}
        value = arg.target(*args, **kwargs)
    cache[arg] = value
    return value


def _concrete_tree(value: Any, program: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_concrete_tree(v, program) for v in value)
    return _concrete(value, program)


def _finite_static(nodes: list[Any], scalars: list[Any], program: Any) -> bool:
    try:
        return all(bool(torch.isfinite(torch.as_tensor(_concrete(n, program)).float()).all()) for n in nodes) and all(
            math.isfinite(float(s)) for s in scalars
        )
    except Exception:
        return False


def _positive_static(nodes: list[Any], scalars: list[Any], program: Any) -> bool:
    try:
        tensors = [torch.as_tensor(_concrete(n, program)).float() for n in nodes]
        return all(bool(((t > 0) & torch.isfinite(t)).all()) for t in tensors) and all(
            math.isfinite(float(s)) and float(s) > 0 for s in scalars
        )
    except Exception:
        return False


def _layout(name: str, a: dict[str, Any], x: Any, before: tuple[int, ...], out: tuple[int, ...]) -> Any:
    """View, reshape, permute and their kin: where the positions land."""
    if isinstance(x, Pair):
        q, k = _moved_dim(name, a, Seq(x.q), before, out), _moved_dim(name, a, Seq(x.k), before, out)
        if not (q.plain and k.plain):
            raise NotCausal(f"{name} folds the positions of an attention matrix")
        return Pair(q.dim, k.dim, x.state, x.lag)
    if not isinstance(x, Seq):
        return _refuse(name)
    return _moved_dim(name, a, x, before, out)


def _moved_dim(name: str, a: dict[str, Any], x: Seq, before: tuple[int, ...], out: tuple[int, ...]) -> Seq:
    if name in ("permute", "transpose", "t", "movedim", "swapaxes"):
        order = list(range(len(before)))
        if name == "permute":
            order = [_dim(d, len(before)) for d in a["dims"]]
        elif name == "t":
            order = order[::-1]
        elif name in ("transpose", "swapaxes"):
            i, j = _dim(a["dim0"], len(before)), _dim(a["dim1"], len(before))
            order[i], order[j] = order[j], order[i]
        else:
            src = a["source"] if isinstance(a["source"], (list, tuple)) else [a["source"]]
            dst = a["destination"] if isinstance(a["destination"], (list, tuple)) else [a["destination"]]
            order = list(torch.empty(before).movedim([_dim(s, len(before)) for s in src],
                                                     [_dim(d, len(before)) for d in dst]).shape)  # fmt: skip
            order = [before.index(s) for s in order] if len(set(before)) == len(before) else _refuse(name)
        return dataclasses.replace(x, dim=order.index(x.dim))
    if name in ("expand", "expand_as", "broadcast_to"):
        return dataclasses.replace(x, dim=x.dim + len(out) - len(before))
    # a reshape: the positions' stride in row-major order must fall inside one output dimension
    stride = math.prod(before[x.dim + 1 :]) * x.inner
    size = before[x.dim] // (x.outer * x.inner)
    for d, n in enumerate(out):
        step = math.prod(out[d + 1 :])
        if n > 1 and step <= stride and stride % step == 0 and (step * n) % (stride * size) == 0:
            inner = stride // step
            outer = n // (size * inner)
            if outer * size * inner == n:
                return Seq(d, outer, inner, x.lag)
    raise NotCausal(f"{name} splits the positions across dimensions")


def _slice(x: Any, dim: int, start: Any, end: Any, step: Any, shape: tuple[int, ...]) -> Any:
    if isinstance(x, Pair):
        if dim in (x.q, x.k) and (start or 0) not in (0, None):
            raise NotCausal("a slice shifts the positions of an attention matrix")
        return x
    if not isinstance(x, Seq) or dim != x.dim:
        return x if isinstance(x, Seq) else _refuse("slice")
    if not x.plain or (step or 1) != 1:
        raise NotCausal("a strided slice of the positions")
    first = int(start or 0)
    first = first + shape[dim] if first < 0 else first
    return dataclasses.replace(x, lag=x.lag + max(0, first))  # position t now holds t + first


def _split(name: str, x: Any, node: Any, env: dict[Any, Any], dim: int) -> Any:
    pieces = node.meta.get("val")
    if not isinstance(x, Seq):
        if isinstance(x, Pair) and dim not in (x.q, x.k):
            return [x] * len(pieces)
        return _refuse(name)
    if dim != x.dim:
        if name == "unbind":
            return [dataclasses.replace(x, dim=x.dim - (dim < x.dim))] * len(pieces)
        return [x] * len(pieces)
    if name == "unbind" or not x.plain:
        raise NotCausal(f"{name} takes the positions apart")
    found, offset = [], 0
    for piece in pieces:
        found.append(dataclasses.replace(x, lag=x.lag + offset))
        offset += int(piece.shape[dim])
    return found


def _drop_dim(x: Any, dim: int, why: str) -> Any:
    if isinstance(x, Seq):
        if dim == x.dim:
            raise NotCausal(why)
        return dataclasses.replace(x, dim=x.dim - (dim < x.dim))
    if isinstance(x, Pair) and dim not in (x.q, x.k):
        return Pair(x.q - (dim < x.q), x.k - (dim < x.k), x.state, x.lag)
    return _refuse("select")


def _cat(name: str, node: Any, env: dict[Any, Any], a: dict[str, Any]) -> Any:
    parts = list(a["tensors"])
    values = [_value(p, env) for p in parts]
    out = _shape(node)
    dim = _dim(a.get("dim", 0), len(out))
    if any(isinstance(v, Pair) for v in values) or not all(v is None or isinstance(v, Seq) for v in values):
        return _refuse(name)
    if name == "stack":
        seqs = [dataclasses.replace(v, dim=v.dim + (dim <= v.dim)) for v in values if v is not None]
    else:
        seqs = [v for v in values if v is not None]
    if any((s.dim, s.outer, s.inner) != (seqs[0].dim, seqs[0].outer, seqs[0].inner) for s in seqs):
        raise NotCausal(f"{name} joins positions that are not aligned")
    if name != "stack" and seqs[0].dim == dim:
        dynamic = [i for i, v in enumerate(values) if v is not None]
        if len(dynamic) > 1 or not seqs[0].plain:
            raise NotCausal(f"{name} joins pieces of the positions")
        before = sum(_shape(p)[dim] for p in parts[: dynamic[0]])
        return dataclasses.replace(seqs[0], lag=seqs[0].lag - before)
    return dataclasses.replace(seqs[0], lag=max(s.lag for s in seqs))


def _pad(x: Any, pad: list[int], ndim: int) -> Any:
    if not isinstance(x, Seq):
        return _refuse("pad")
    left = {ndim - 1 - i // 2: int(p) for i, p in enumerate(pad) if i % 2 == 0}
    if left.get(x.dim, 0) and not x.plain:
        raise NotCausal("pads folded positions")
    return dataclasses.replace(x, lag=x.lag - left.get(x.dim, 0))


def _gather(name: str, a: dict[str, Any], x: Any, node: Any, env: dict[Any, Any], ndim: int) -> Any:
    dims = a.get("dims", a.get("dim"))
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if name == "roll" and not dims:
        raise NotCausal("roll over the flattened tensor moves later tokens to earlier places")
    if not isinstance(x, Seq) or name in ("slice_scatter", "select_scatter", "index_put", "masked_scatter",
                                          "diagonal", "scatter", "scatter_add", "index_add", "index_copy"):  # fmt: skip
        return _scatter(name, a, x, node, env, ndim) if name == "slice_scatter" else _refuse(name)
    if x.dim in [_dim(d, ndim) for d in dims]:
        raise NotCausal(f"{name} moves tokens along the positions")
    index = _value(a.get("index"), env) if hasattr(a.get("index"), "op") else None
    if name in ("gather", "take_along_dim") and isinstance(index, Seq):
        if (index.dim, index.outer, index.inner) != (x.dim, x.outer, x.inner):
            raise NotCausal(f"{name} with an index whose positions are not aligned")
        return dataclasses.replace(x, lag=max(x.lag, index.lag))
    if index is not None:
        raise NotCausal(f"{name} with a token-dependent index")
    return x


def _scatter(name: str, a: dict[str, Any], x: Any, node: Any, env: dict[Any, Any], ndim: int) -> Any:
    """slice_scatter(base, src, dim, start): src written into base from position start on."""
    src = _value(a["src"], env)
    dim = _dim(a["dim"], ndim)
    values = [v for v in (x, src) if v is not None]
    if not all(isinstance(v, Seq) and v.plain for v in values):
        return _refuse(name)
    seq = values[0]
    if any(v.dim != seq.dim for v in values):
        raise NotCausal(f"{name} joins positions that are not aligned")
    start = int(a.get("start") or 0)
    start = start + _shape(node.args[0])[dim] if start < 0 else start
    lags = [x.lag] if isinstance(x, Seq) else []
    if isinstance(src, Seq):
        lags.append(src.lag - start if dim == seq.dim else src.lag)
    return dataclasses.replace(seq, lag=max(lags))


def _softmax(name: str, x: Any, dim: int) -> Any:
    if isinstance(x, Pair):
        if dim != x.k:
            raise NotCausal(f"{name} across queries")
        return Pair(x.q, x.k, "zeroed" if x.state == "masked" and "log" not in name else
                    ("masked" if x.state == "masked" else "open"), x.lag)  # fmt: skip
    if isinstance(x, Seq) and dim == x.dim:
        raise NotCausal(f"{name} over the positions")
    return x if isinstance(x, Seq) else _refuse(name)


def _reduce(name: str, a: dict[str, Any], x: Any, ndim: int, node: Any) -> Any:
    dims = a.get("dim", a.get("axis"))
    dims = list(range(ndim)) if dims is None or dims == [] else ([dims] if isinstance(dims, int) else list(dims))
    dims = [_dim(d, ndim) for d in dims]
    keep = bool(a.get("keepdim", False))
    if isinstance(x, Pair):
        if dims == [x.k] and x.state == "zeroed" and name in ("sum", "nansum"):
            return Seq(x.q - (not keep and x.k < x.q), lag=x.lag)
        raise NotCausal(f"{name} over an attention matrix")
    if not isinstance(x, Seq) or x.dim in dims:
        raise NotCausal(f"{name} over the positions")
    moved = dataclasses.replace(x, dim=x.dim - (0 if keep else sum(d < x.dim for d in dims)))
    val = node.meta.get("val")
    return [moved] * len(val) if isinstance(val, (list, tuple)) else moved


def _labels(name: str, node: Any, a: dict[str, Any]) -> tuple[list[Any], list[list[str]], list[str]]:
    """The contraction as einsum labels: operands, their labels, the output's labels."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    if name == "einsum":
        eq = a["equation"].replace(" ", "")
        if "." in eq:
            raise NotCausal("einsum with an ellipsis")
        ins, res = eq.split("->") if "->" in eq else (eq, "")
        return list(a["tensors"]), [list(s) for s in ins.split(",")], list(res)
    if name == "linear":
        n = len(_shape(a["input"]))
        batch = list(letters[: n - 1])
        return [a["input"], a["weight"]], [[*batch, "y"], ["z", "y"]], [*batch, "z"]
    pairs = {
        "mm": ("self", "mat2"),
        "bmm": ("self", "mat2"),
        "baddbmm": ("batch1", "batch2"),
        "addmm": ("mat1", "mat2"),
    }
    first, second = pairs.get(name, ("self", "other" if "other" in a else "vec"))
    ops = [a[first], a[second]]
    na, nb = len(_shape(ops[0])), len(_shape(ops[1]))
    if na < 2 or nb < 2:
        raise NotCausal(f"{name} of a vector")
    n = max(na, nb)
    batch = list(letters[: n - 2])
    return ops, [[*batch[n - na :], "i", "j"], [*batch[n - nb :], "j", "k"]], [*batch, "i", "k"]


def _contract(name: str, node: Any, env: dict[Any, Any], a: dict[str, Any]) -> Any:
    ops, labels, out = _labels(name, node, a)
    seqs, pairs = [], []
    for op, lab in zip(ops, labels, strict=True):
        value = _value(op, env)
        if isinstance(value, Seq):
            seqs.append((lab[value.dim], value))
        elif isinstance(value, Pair):
            pairs.append((lab[value.q], lab[value.k], value))
        elif value is not None:
            return _refuse(name)
    result: Any = None
    if pairs:
        (q, k, pair), rest = pairs[0], seqs
        if len(pairs) > 1 or len(rest) != 1 or rest[0][0] != k or k in out or q not in out or not rest[0][1].plain:
            raise NotCausal(f"{name} mixes positions through an attention matrix in a way the check cannot follow")
        if pair.state != "zeroed":
            raise NotCausal(f"{name} weights later positions: the attention matrix is not masked causally "
                            "(-inf above the diagonal before softmax, or is_causal=True)")  # fmt: skip
        result = Seq(out.index(q), lag=max(pair.lag, rest[0][1].lag))
    elif len(seqs) == 1:
        label, seq = seqs[0]
        if label not in out:
            raise NotCausal(f"{name} sums over the positions")
        result = dataclasses.replace(seq, dim=out.index(label))
    elif len(seqs) == 2:
        (la, sa), (lb, sb) = seqs
        if la not in out or lb not in out:
            raise NotCausal(f"{name} sums over the positions")
        if la == lb:
            if (sa.outer, sa.inner) != (sb.outer, sb.inner):
                raise NotCausal(f"{name} combines positions that are not aligned")
            result = dataclasses.replace(sa, dim=out.index(la), lag=max(sa.lag, sb.lag))
        elif sa.plain and sb.plain:
            result = Pair(out.index(la), out.index(lb), "open", max(sa.lag, sb.lag))
        else:
            raise NotCausal(f"{name} pairs folded positions")
    elif seqs:
        raise NotCausal(f"{name} of three token-dependent tensors")
    bias = _value(a.get("bias", a.get("self") if name in ("addmm", "baddbmm") else None), env) if name in (
        "linear", "addmm", "baddbmm") else None  # fmt: skip
    if bias is not None:
        raise NotCausal(f"{name} with a token-dependent bias")
    return result


def _attention(name: str, node: Any, env: dict[Any, Any], a: dict[str, Any], program: Any) -> Any:
    q, k, v = (_value(a[n], env) for n in ("query", "key", "value"))
    nq = len(_shape(a["query"]))
    for value in (q, k, v):
        if value is not None and not (isinstance(value, Seq) and value.plain and value.dim == nq - 2):
            raise NotCausal(f"{name} over tensors whose positions are not at dim -2")
    if _shape(a["query"])[-2] != _shape(a["key"])[-2]:
        raise NotCausal(f"{name} with queries and keys of different lengths")
    mask = a.get("attn_mask", a.get("attn_bias"))
    if a.get("is_causal"):
        if mask is not None:
            raise NotCausal(f"{name} with both is_causal and a mask")
    elif mask is None or _dynamic(_value(mask, env)) or not _causal_mask(mask, program, _shape(a["query"])[-2]):
        raise NotCausal(f"{name} without is_causal=True or a mask that hides every later position")
    seq = Seq(nq - 2, lag=max(s.lag for s in (q, k, v) if s is not None))
    return seq if name == "scaled_dot_product_attention" else [seq, *[POISON] * (len(node.meta["val"]) - 1)]


def _causal_mask(mask: Any, program: Any, t: int) -> bool:
    try:
        value = torch.as_tensor(_concrete(mask, program))
        later = torch.ones(t, t, dtype=torch.bool).triu(1)
        plane = value.expand(*value.shape[:-2], t, t).reshape(-1, t, t)
        if value.dtype == torch.bool:
            return not bool(plane[:, later].any())
        return bool((plane[:, later].float() == -math.inf).all() and not (plane.float() == math.inf).any())
    except Exception:
        return False


def _conv(a: dict[str, Any], x: Any, ndim: int, node: Any, env: dict[Any, Any]) -> Any:
    if not isinstance(x, Seq) or _dynamic(_value(a["weight"], env)):
        return _refuse("convolution")
    if x.dim == 0:
        return x
    if ndim != 3 or x.dim != 2 or not x.plain or a.get("transposed") or list(a["stride"]) != [1]:
        raise NotCausal("a convolution over the positions other than a plain 1-d one")
    kernel = _shape(a["weight"])[-1]
    dilation, padding = int(list(a["dilation"])[0]), int(list(a["padding"])[0])
    return dataclasses.replace(x, lag=x.lag + (kernel - 1) * dilation - padding)
