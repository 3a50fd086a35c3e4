"""Fold the tracer's shape arithmetic into constants.

The TorchScript tracer records every ``x.shape[i]`` as Shape -> Gather -> Unsqueeze -> Concat, also for
dimensions the contract makes static (the trace runs small, with the spatial dims marked dynamic, and the
batch is dynamic for real). ONNX Runtime cannot fold a Shape whose input has any dynamic dim, so a tiny
UNet call ran ~1,500 shape nodes, a sixth of its time. Here the shapes that shape inference proves static
are propagated through that arithmetic with numpy (no weights read, nothing run: ONNX Runtime's symbolic
shape inference is used where installed, ONNX's otherwise), and:

- a node whose outputs are all known becomes an initializer;
- a Reshape whose target shape is known but for one dim (the batch) gets a constant target with -1 there.

Only the small integer subgraph is touched; the graph computes the same values as before.
"""
from __future__ import annotations

import functools
import re

import numpy as np
import onnx
import sympy
from onnx import helper, numpy_helper

SMALL = 4096  # largest constant (elements) a folded node may produce
_FOLDABLE = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Add", "Sub",
             "Mul", "Div", "Equal", "Where", "Range", "ConstantOfShape", "Expand", "Floor", "Neg"}


def fold_shapes(model: onnx.ModelProto, max_rounds: int = 8) -> onnx.ModelProto:
    """``model`` with its provably static shape arithmetic folded; rounds until nothing changes. The graph's
    inputs and outputs keep their declared shapes (symbolic inference renames their dims)."""
    declared = {field: [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in getattr(model.graph, field)]
                for field in ("input", "output")}
    for _ in range(max_rounds):
        model = _infer(model, symbolic=True)
        if not _fold_once(model.graph):
            break
        _drop_dead(model.graph)
    for field, values in declared.items():
        del getattr(model.graph, field)[:]
        getattr(model.graph, field).extend(values)
    return _infer(model, symbolic=False)


def _infer(model: onnx.ModelProto, symbolic: bool) -> onnx.ModelProto:
    """Shapes of every tensor. Symbolic (ONNX Runtime's sympy inference, which carries the batch through
    Reshapes with -1 as e.g. ``16*N``) when onnxruntime is here; else ONNX's, which stops at the first such
    Reshape and so folds less."""
    del model.graph.value_info[:]  # the tracer's symbolic dims would shadow what inference now proves
    if symbolic:
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        except Exception:  # not installed, or an op it does not know: the plain inference below
            del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _dim(d):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return _parse_dim(d.dim_param)
    return None


@functools.lru_cache(maxsize=4096)
def _parse_dim(text: str):
    """A symbolic dim as a sympy expression, or None. Cached: a UNet graph names a few dozen distinct dims tens of
    thousands of times, and parsing each again was half of the folding's time (sympy expressions are immutable)."""
    names = {t: sympy.Symbol(t, integer=True, positive=True) for t in re.findall(r"[A-Za-z_]\w*", text)}
    try:
        value = sympy.sympify(text, locals=names)
    except (sympy.SympifyError, TypeError, SyntaxError, AttributeError):
        return None
    return value if isinstance(value, sympy.Expr) and value.free_symbols <= set(names.values()) else None


def _static_shapes(graph) -> dict[str, list]:
    shapes = {}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [_dim(d) for d in t.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _known_initializers(graph) -> dict[str, np.ndarray]:
    known = {}
    for init in graph.initializer:
        small = int(np.prod(init.dims)) <= SMALL if init.dims else True
        if small and init.data_location != onnx.TensorProto.EXTERNAL and init.data_type in (
                onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL):
            known[init.name] = numpy_helper.to_array(init)
    return known


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) or isinstance(v, sympy.Integer)


def _partial(x) -> bool:
    """Holds an entry that is not a number (None: unknown; a sympy expression: the batch)."""
    x = np.asarray(x)
    return x.dtype == object and not all(_is_int(v) or isinstance(v, (float, bool, np.bool_)) for v in x.ravel())


def _concrete(x) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.int64) if x.dtype == object else x


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _eval(node, ins: list, shapes: dict) -> list | None:
    """The outputs of ``node`` from its inputs (numpy arrays; object arrays where some entry is symbolic,
    a sympy expression of the dynamic dims, or None, unknown), or None when they cannot be told."""
    op = node.op_type
    if op == "Shape":
        dims = shapes.get(node.input[0])
        if dims is None:
            return None
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return [np.array(dims[start:end] + [0], dtype=object)[:-1]]
    if any(x is None for x in ins):
        return None
    if op == "Identity":
        return [ins[0]]
    if op == "Gather":
        return [np.take(ins[0], _concrete(ins[1]), axis=_attr(node, "axis", 0))]
    if op == "Unsqueeze":  # axes: an input from opset 13, an attribute before
        out = ins[0]
        axes = _concrete(ins[1]).ravel() if len(ins) > 1 else _attr(node, "axes", [])
        for axis in sorted(int(a) for a in axes):
            out = np.expand_dims(out, axis if axis >= 0 else axis + out.ndim + 1)
        return [out]
    if op == "Squeeze":
        axes = _concrete(ins[1]).ravel() if len(ins) > 1 else _attr(node, "axes", None)
        axes = None if axes is None else tuple(int(a) for a in axes)
        return [np.squeeze(ins[0], axis=axes)]
    if op == "Concat":
        parts = [np.atleast_1d(x) for x in ins]
        if any(p.dtype == object for p in parts):
            parts = [p.astype(object) for p in parts]
        return [np.concatenate(parts, axis=_attr(node, "axis", 0))]
    if op == "Slice":
        data, starts, ends = ins[0], _concrete(ins[1]), _concrete(ins[2])
        axes = _concrete(ins[3]) if len(ins) > 3 and node.input[3] else np.arange(len(starts))
        steps = _concrete(ins[4]) if len(ins) > 4 and node.input[4] else np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            index[int(a)] = slice(int(s), int(e), int(st))
        return [data[tuple(index)]]
    if op == "Cast":
        to = helper.tensor_dtype_to_np_dtype(_attr(node, "to"))
        if _partial(ins[0]):
            return [ins[0]] if np.issubdtype(to, np.integer) else None
        return [_concrete(ins[0]).astype(to)]
    if op in ("Add", "Sub", "Mul", "Div") and (_partial(ins[0]) or _partial(ins[1])):
        return [_symbolic_arith(op, ins[0], ins[1])]
    if any(_partial(x) for x in ins):
        return None
    ins = [_concrete(x) for x in ins]
    if op == "Div":
        a, b = ins
        if np.issubdtype(a.dtype, np.integer):
            return [(np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)).astype(a.dtype)]
        return [a / b]
    if op in ("Add", "Sub", "Mul", "Equal"):
        return [{"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Equal": np.equal}[op](*ins)]
    if op == "Neg":
        return [-ins[0]]
    if op == "Floor":
        return [np.floor(ins[0])]
    if op == "Where":
        return [np.where(*ins)]
    if op == "Range":
        if abs((float(ins[1]) - float(ins[0])) / float(ins[2])) > SMALL:
            return None
        return [np.arange(ins[0], ins[1], ins[2]).astype(ins[0].dtype)]
    if op == "ConstantOfShape":
        shape = tuple(int(d) for d in ins[0])
        if int(np.prod(shape)) > SMALL:  # before allocating it: such a tensor stays a node
            return None
        value = _attr(node, "value")
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
        return [np.full(shape, fill.ravel()[0], fill.dtype)]
    if op == "Expand":
        shape = np.broadcast_shapes(ins[0].shape, tuple(int(d) for d in ins[1]))
        if int(np.prod(shape)) > SMALL:
            return None
        return [np.broadcast_to(ins[0], shape).copy()]
    return None


def _symbolic_arith(op, a, b):
    a, b = np.broadcast_arrays(np.asarray(a, dtype=object), np.asarray(b, dtype=object))
    out = np.empty(a.shape, dtype=object)
    for i, (x, y) in enumerate(zip(a.ravel(), b.ravel())):
        out.flat[i] = _arith(op, x, y)
    return out


def _arith(op, x, y):
    if x is None or y is None or isinstance(x, float) or isinstance(y, float):
        return None
    x = sympy.Integer(int(x)) if _is_int(x) else x
    y = sympy.Integer(int(y)) if _is_int(y) else y
    if op == "Add":
        return sympy.expand(x + y)
    if op == "Sub":
        return sympy.expand(x - y)
    if op == "Mul":
        return sympy.expand(x * y)
    return _exact_quotient(x, y)


def _exact_quotient(x, y):
    """x / y where it is an integer polynomial (a shape divided by a factor it holds), else unknown."""
    if y == 0:
        return None
    q = sympy.expand(sympy.cancel(x / y))
    coeffs = q.as_coefficients_dict().values()
    ok = all(sympy.Integer(c) == c for c in coeffs) and q.is_polynomial()
    return q if ok else None


def _reshape_target(target, dims, allowzero: int):
    """A constant target for a Reshape of a tensor shaped ``dims`` to the (partly symbolic) ``target``:
    -1 at its one symbolic entry. None when more than one entry is not a number."""
    t = list(np.asarray(target, dtype=object).ravel())
    if any(v is None for v in t):
        return None
    if not allowzero:
        for i, v in enumerate(t):
            if _is_int(v) and int(v) == 0:
                if dims is None or i >= len(dims) or dims[i] is None:
                    return None
                t[i] = dims[i]
    holes = [i for i, v in enumerate(t) if _is_int(v) and int(v) == -1]
    if holes:
        if len(holes) > 1 or dims is None or any(d is None for d in dims):
            return None
        rest = sympy.Integer(1)
        for i, v in enumerate(t):
            if i != holes[0]:
                rest *= v
        total = sympy.Integer(1)
        for d in dims:
            total *= d
        t[holes[0]] = _exact_quotient(sympy.expand(total), sympy.expand(rest))
        if t[holes[0]] is None:
            return None
    symbolic = [i for i, v in enumerate(t) if not _is_int(sympy.simplify(v) if not _is_int(v) else v)]
    if len(symbolic) > 1 or any(_is_int(v) and int(v) <= 0 for v in t):
        return None
    return np.array([-1 if i in symbolic else int(v) for i, v in enumerate(t)], np.int64)


def _fold_once(graph) -> bool:
    shapes = _static_shapes(graph)
    values: dict[str, np.ndarray] = dict(_known_initializers(graph))
    new_inits, keep, changed = [], [], False
    used_names = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    constants = {i.name for i in graph.initializer}  # Reshapes reading these are done
    outputs = _graph_outputs(graph)

    def fresh(base):
        name, k = base, 0
        while name in used_names:
            k += 1
            name = f"{base}_{k}"
        used_names.add(name)
        return name

    for node in graph.node:
        if node.op_type == "Constant" and _attr(node, "value") is not None:
            values[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
            constants.add(node.output[0])
            keep.append(node)
            continue
        outs = None
        if node.op_type in _FOLDABLE:
            ins = [values.get(name) if name else None for name in node.input]
            try:
                outs = _eval(node, ins, shapes)
                outs = None if outs is None else [np.asarray(o) for o in outs]
            except (ValueError, IndexError, TypeError, OverflowError, ZeroDivisionError):
                outs = None
        if outs is not None:
            for name, value in zip(node.output, outs):
                values[name] = value
            done = all(not _partial(v) and v.size <= SMALL for v in outs)
            if done and not set(node.output) & outputs:
                for name, value in zip(node.output, outs):
                    if value.dtype == object:
                        value = value.astype(np.int64)
                    new_inits.append(numpy_helper.from_array(value, name))
                    constants.add(name)
                changed = True
                continue
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] not in constants:
            target = values.get(node.input[1])
            const = None if target is None else _reshape_target(target, shapes.get(node.input[0]),
                                                                 _attr(node, "allowzero", 0))
            if const is not None:
                name = fresh(node.input[1] + "_static")
                new_inits.append(numpy_helper.from_array(const, name))
                constants.add(name)
                node.input[1] = name
                changed = True
        keep.append(node)
    if changed:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(new_inits)
    return changed


def _graph_outputs(graph) -> set[str]:
    return {o.name for o in graph.output}


def _drop_dead(graph) -> None:
    """Nodes whose outputs nobody reads, then initializers nobody reads."""
    outputs = _graph_outputs(graph)
    while True:
        read = {name for n in graph.node for name in n.input} | outputs
        read |= {name for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH
                 for sub in [a.g] for m in sub.node for name in m.input}
        alive = [n for n in graph.node if any(o in read for o in n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    inits = [i for i in graph.initializer if i.name in read]  # ``read``: of the nodes left, subgraphs too
    del graph.initializer[:]
    graph.initializer.extend(inits)
