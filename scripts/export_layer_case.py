#!/usr/bin/python3
"""Weight interchange with `seqtrain layer-run` (format: train/layer_run.h, docs/layers.md).

As a library (h5py and numpy; PyTorch only for the module helpers):
    write_case(path, layer, config_yaml, params, x, grad_y=None, dtype="f32", device="cpu")
    write_results(path, y, grad_x=None, grad_params=None, dtype="f32")   # OUT.h5's layout
    module_params(module), module_grads(module)   # seqtrain names and shapes from a torch module
    compare(out_path, expected_path, tol)         # relative errors per dataset

As a command:
    export_layer_case.py demo LAYER CASE.h5 EXPECTED.h5 [--dtype f32|f64] [--seed S] [--no-backward]
                                                        [--device cpu|cuda]
        LAYER: attn, mamba, mamba2, hedgehog, aaren, titans, titans-linear, block (attn, rmsnorm, swiglu)
        or block-gelu (attn, layernorm, gelu, biases). Builds the plain-PyTorch reference of scripts/torch_reference_layers.py
        with random weights and inputs, runs it forward and backward from a random grad_y, and writes
        the case and PyTorch's results (EXPECTED.h5, the layout of layer-run's OUT.h5), computed in
        f64 from the case's values whatever its dtype. --device only sets where seqtrain runs the
        case; the reference runs on the CPU.
    export_layer_case.py compare OUT.h5 EXPECTED.h5 [--tol 1e-5]
        Prints ||out - expected|| / ||expected|| per dataset; exits 1 when one exceeds tol, or when
        the two files do not hold the same datasets with the same shapes.
Run it with an interpreter that has h5py (and torch for demo), e.g. /usr/bin/python3 on Debian with
python3-h5py and python3-torch.
"""
import argparse
import os
import sys

import h5py
import numpy as np

NUMPY_DTYPES = {"f32": np.float32, "f64": np.float64}

# The demo layers: the case's `layer` attribute and model settings (seqtrain's config keys).
# Sizes are small and odd on purpose: T = 7 spans two Hedgehog chunks of 4 and three Mamba-2 chunks
# of 3; Mamba-2 has two groups of B, C over four heads.
DEMOS = {
    "attn": ("attn", {"d_model": 8, "attn": {"n_heads": 2, "n_kv_heads": 2, "pos": "none"}}),
    "mamba": ("mamba", {"d_model": 8, "mamba": {"d_state": 3, "d_conv": 4, "expand": 2, "dt_rank": 2}}),
    "mamba2": ("mamba2", {"d_model": 8, "mamba2": {"d_state": 3, "d_conv": 4, "expand": 2, "headdim": 4, "ngroups": 2,
                                                   "chunk_size": 3}}),
    "hedgehog": ("hedgehog", {"d_model": 8, "hedgehog": {"n_heads": 2, "feature_dim": 4, "chunk": 4}}),
    "aaren": ("aaren", {"d_model": 8, "aaren": {"n_heads": 2}}),
    "titans": ("titans", {"d_model": 8, "titans": {"n_heads": 2, "chunk": 3, "memory_depth": 2, "memory_expand": 2,
                                                   "d_conv": 3, "max_lr": 0.5, "max_grad_norm": 0.5}}),
    "titans-linear": ("titans", {"d_model": 8, "titans": {"n_heads": 2, "chunk": 2, "memory_depth": 1, "d_conv": 2,
                                                          "max_lr": 0.5, "max_grad_norm": 0, "qk_norm": False}}),
    "block": ("block", {"d_model": 8, "pattern": ["attn"], "norm": "rmsnorm", "mlp": {"type": "swiglu", "hidden": 16},
                        "attn": {"n_heads": 2, "n_kv_heads": 2, "pos": "none"}}),
    "block-gelu": ("block", {"d_model": 8, "pattern": ["attn"], "norm": "layernorm", "bias": True,
                             "mlp": {"type": "gelu", "hidden": 32}, "attn": {"n_heads": 2, "n_kv_heads": 1, "pos": "none"}}),
}
DEMO_BATCH, DEMO_TIME = 2, 7


def to_numpy(t):
    """A torch tensor (detached, on the host) or anything numpy takes."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _write(group, name, value, dtype):
    group.create_dataset(name, data=to_numpy(value).astype(NUMPY_DTYPES[dtype]))


def write_case(path, layer, config_yaml, params, x, grad_y=None, dtype="f32", device="cpu"):
    """Writes a layer-run case. params: {name: tensor or array} with seqtrain's names and shapes
    (docs/layers.md); x [B, T, D]; grad_y (optional) the upstream gradient, shaped like y.
    Everything is stored in `dtype` (f32 | f64); config_yaml is a `model:` section or the bare
    mapping of model settings."""
    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"dtype must be f32 or f64, got {dtype!r}")
    with h5py.File(path, "w") as f:
        f.attrs["layer"] = layer
        f.attrs["dtype"] = dtype
        f.attrs["device"] = device
        f["config"] = config_yaml
        group = f.create_group("params")
        for name, value in params.items():
            _write(group, name, value, dtype)
        inputs = f.create_group("inputs")
        _write(inputs, "x", x, dtype)
        if grad_y is not None:
            _write(inputs, "grad_y", grad_y, dtype)


def write_results(path, y, grad_x=None, grad_params=None, dtype="f32"):
    """Writes results in layer-run's OUT.h5 layout: outputs/y, and grads/x, grads/params/<name>."""
    with h5py.File(path, "w") as f:
        f.attrs["dtype"] = dtype
        _write(f.create_group("outputs"), "y", y, dtype)
        if grad_x is not None:
            grads = f.create_group("grads")
            _write(grads, "x", grad_x, dtype)
            group = grads.create_group("params")
            for name, value in (grad_params or {}).items():
                _write(group, name, value, dtype)


def _seqtrain_layout(name, t):
    # mamba_ssm's nn.Conv1d weight is [E, 1, K]; seqtrain's depthwise causal_conv1d takes [E, K].
    if name.split(".")[-2:] == ["conv1d", "weight"] and t.dim() == 3 and t.shape[1] == 1:
        return t[:, 0, :]
    return t


def module_params(module):
    """{name: tensor} of a torch module's parameters in seqtrain's layout."""
    return {name: _seqtrain_layout(name, p.detach()) for name, p in module.named_parameters()}


def module_grads(module):
    """{name: gradient} in seqtrain's layout; zeros where no gradient arrived (as layer-run writes)."""
    import torch

    return {name: _seqtrain_layout(name, p.grad if p.grad is not None else torch.zeros_like(p))
            for name, p in module.named_parameters()}


def flow_yaml(value):
    """A dict/list/scalar as one line of YAML flow style (enough for model settings)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow_yaml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def demo(name, case_path, expected_path, dtype="f32", seed=0, backward=True, device="cpu"):
    """Writes a case for demo layer `name` and PyTorch's results for it."""
    import torch

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch_reference_layers as ref

    layer, model = DEMOS[name]
    torch_dtype = {"f32": torch.float32, "f64": torch.float64}[dtype]
    gen = torch.Generator().manual_seed(seed)
    module = ref.build(layer, model)
    ref.randomize(module, gen)
    module = module.to(torch_dtype)
    shape = (DEMO_BATCH, DEMO_TIME, model["d_model"])
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(torch_dtype).requires_grad_(backward)
    grad_y = torch.randn(shape, generator=gen, dtype=torch.float64).to(torch_dtype) if backward else None
    # Alternate the two accepted config forms: a bare mapping, and a `model:` section.
    config = flow_yaml(model) if seed % 2 == 0 else "model:\n  " + flow_yaml(model) + "\n"
    write_case(case_path, layer, config, module_params(module), x, grad_y, dtype, device)
    # The reference runs in f64 on the case's exact values (an f32 case's weights and inputs are
    # f32 numbers, held exactly in f64): expected results are the f64 CPU reference of DESIGN.md,
    # not PyTorch's own f32 rounding.
    module = module.to(torch.float64)
    x = x.detach().to(torch.float64).requires_grad_(backward)
    y = module(x)
    if backward:
        y.backward(grad_y.to(torch.float64))
        write_results(expected_path, y, x.grad, module_grads(module), "f64")
    else:
        write_results(expected_path, y, dtype="f64")


def _datasets(f):
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return found


def compare(out_path, expected_path, tol):
    """Relative errors ||out - expected||_2 / ||expected||_2 per dataset of expected_path (the
    absolute norm of the difference where the expected tensor is all zeros). Returns (ok, lines)."""
    with h5py.File(out_path, "r") as fo, h5py.File(expected_path, "r") as fe:
        out, expected = _datasets(fo), _datasets(fe)
    ok, lines = True, []
    for name in sorted(set(out) - set(expected)):
        ok = False
        lines.append(f"{name}: in {out_path} but not in {expected_path}")
    for name in sorted(expected):
        e = np.asarray(expected[name], dtype=np.float64)
        if name not in out:
            ok = False
            lines.append(f"{name}: missing from {out_path}")
            continue
        o = np.asarray(out[name], dtype=np.float64)
        if o.shape != e.shape:
            ok = False
            lines.append(f"{name}: shape {list(o.shape)} in {out_path}, {list(e.shape)} expected")
            continue
        diff = float(np.linalg.norm(o - e))
        scale = float(np.linalg.norm(e))
        rel = diff / scale if scale > 0 else diff
        bad = not rel <= tol  # NaN fails
        ok &= not bad
        lines.append(f"{name:32s} rel {rel:.3e}  max|diff| {float(np.max(np.abs(o - e), initial=0)):.3e}"
                     f"{'  > tol ' + format(tol, 'g') if bad else ''}")
    return ok, lines


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="write a case and PyTorch's results for a reference layer")
    d.add_argument("layer", choices=sorted(DEMOS))
    d.add_argument("case")
    d.add_argument("expected")
    d.add_argument("--dtype", choices=sorted(NUMPY_DTYPES), default="f32")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-backward", action="store_true", help="forward only (no inputs/grad_y)")
    d.add_argument("--device", default="cpu", help="the case's device attribute (where seqtrain runs it)")
    c = sub.add_parser("compare", help="relative errors of layer-run's OUT.h5 against EXPECTED.h5")
    c.add_argument("out")
    c.add_argument("expected")
    c.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(args.layer, args.case, args.expected, args.dtype, args.seed, not args.no_backward, args.device)
        return 0
    ok, lines = compare(args.out, args.expected, args.tol)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
