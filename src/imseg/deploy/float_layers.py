"""Which layers an int8 export keeps in float: ``--keep-float none|head|ends``.

Static int8 gives every activation one scale per tensor. Two places pay for
that more than the rest. The head: the classifier's output is the logits,
and their argmax is the answer; quantising them (and the upsampling after
them) to 256 levels over the whole logit range turns near-ties between two
classes into coin flips along every boundary. The stem: the first
convolution sees the raw normalised picture, a 3-channel input whose ranges
differ by channel. Keeping the last compute layer before each output
("head"), and also the first after each input ("ends"), in float costs a
few percent of the model's compute (one 1x1 convolution to the classes; one
3x3 convolution of 3 channels) and, measured in docs/deploy.md, most of the
int8 accuracy loss on CamVid.

The walk goes from the graph's outputs back to the nearest compute layer
(convolution or matrix product) on every path, and from the inputs forward
to the nearest one: those layers and everything between them and the
outputs or inputs stay float.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

KEEP_FLOAT = ("none", "head", "ends")
ONNX_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
OPENVINO_COMPUTE = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData",
                    "MatMul"}


def _walk(starts: Iterable[Any], neighbours: Callable[[Any], Iterable[Any]], is_compute: Callable[[Any], bool],
          key: Callable[[Any], str]) -> list[Any]:
    """Nodes reached from ``starts`` through ``neighbours``, stopping at (and including) compute nodes."""
    seen: dict[str, Any] = {}
    todo = list(starts)
    while todo:
        node = todo.pop()
        if key(node) in seen:
            continue
        seen[key(node)] = node
        if not is_compute(node):
            todo.extend(neighbours(node))
    return list(seen.values())


def check_keep_float(keep_float: str) -> None:
    if keep_float not in KEEP_FLOAT:
        raise ValueError(f"--keep-float {keep_float!r} is not one of {', '.join(KEEP_FLOAT)}")


def onnx_float_nodes(graph: Any, keep_float: str) -> list[str]:
    """Names of the nodes of an ONNX ``graph`` to leave unquantised (onnxruntime's ``nodes_to_exclude``)."""
    check_keep_float(keep_float)
    if keep_float == "none":
        return []
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_compute(node: Any) -> bool:
        return node.op_type in ONNX_COMPUTE

    def inputs_of(node: Any) -> Iterable[Any]:
        return (producer[name] for name in node.input if name in producer)

    def outputs_of(node: Any) -> Iterable[Any]:  # the picture's data, not the shape arithmetic (Shape's consumers)
        return (n for out in node.output for n in consumers.get(out, []) if n.op_type != "Shape")

    chosen = _walk((producer[o.name] for o in graph.output if o.name in producer), inputs_of, is_compute,
                   lambda node: node.name)
    if keep_float == "ends":
        firsts = (n for i in graph.input for n in consumers.get(i.name, []) if n.op_type != "Shape")
        chosen += _walk(firsts, outputs_of, is_compute, lambda node: node.name)
    return sorted({node.name for node in chosen})


def openvino_float_nodes(model: Any, keep_float: str) -> list[str]:
    """Friendly names of the operations of an OpenVINO ``model`` to leave unquantised (NNCF's ignored scope)."""
    check_keep_float(keep_float)
    if keep_float == "none":
        return []

    def is_compute(node: Any) -> bool:
        return node.get_type_name() in OPENVINO_COMPUTE

    def name(node: Any) -> str:
        return node.get_friendly_name()

    def inputs_of(node: Any) -> Iterable[Any]:
        return (value.get_node() for value in node.input_values())

    def users(outputs: Iterable[Any]) -> Iterable[Any]:  # the picture's data, not the shape arithmetic (ShapeOf)
        return (t.get_node() for out in outputs for t in out.get_target_inputs()
                if t.get_node().get_type_name() != "ShapeOf")

    chosen = _walk((result.input_value(0).get_node() for result in model.get_results()), inputs_of, is_compute, name)
    if keep_float == "ends":
        chosen += _walk(users(p.output(0) for p in model.get_parameters()), lambda node: users(node.outputs()),
                        is_compute, name)
    return sorted({name(node) for node in chosen if node.get_type_name() not in ("Parameter", "Result", "Constant")})
