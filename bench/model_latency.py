"""Policy sampling latency (one observation → one chunk, 5 flow steps); one JSON line.

    python bench/model_latency.py                      # `small` on CPU (state and pixels)
    python bench/model_latency.py --vlm --device cuda  # + Qwen2.5-VL-3B-shaped, bf16, 3×224²

The VLM configuration has Qwen2.5-VL-3B-Instruct's shapes with random weights (nothing is
downloaded); its action expert has half the VLM's 36 layers. Latency covers image
preprocessing, the VLM prefix pass and the expert's Euler steps (CUDA-synchronised).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from grrl_policy.encoders import ObservationBatch
from grrl_policy.model import ExpertConfig, FlowMatchingPolicy, PolicyConfig

CAMERAS = ("head", "left_wrist", "right_wrist")


def measure(model: FlowMatchingPolicy, obs: ObservationBatch, device: str, runs: int) -> dict:
    def once() -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        model.sample(obs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000

    for _ in range(3):
        once()  # warm-up (allocator, kernels)
    times = np.array([once() for _ in range(runs)])
    return {"p50_ms": round(float(np.percentile(times, 50)), 2),
            "p99_ms": round(float(np.percentile(times, 99)), 2)}  # fmt: skip


def small(device: str, runs: int, pixels: bool) -> dict:
    cameras = CAMERAS if pixels else ()
    cfg = PolicyConfig(state_dim=14 if pixels else 28, action_dim=14, chunk=20, cameras=cameras)
    model = FlowMatchingPolicy(cfg).to(device).eval()
    images = None
    if pixels:
        images = torch.randint(0, 255, (1, 3, 3, 128, 128), dtype=torch.uint8, device=device)
    obs = ObservationBatch(torch.randn(1, cfg.state_dim, device=device),
                           ["insert the peg into the socket"], images)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {**measure(model, obs, device, runs), "params_m": round(params / 1e6, 2)}


def vlm(device: str, runs: int) -> dict:
    from grrl_policy.vlm_encoder import VLMEncoder, qwen25_vl_3b_config

    # built in bf16 directly on the device (not 15 GB of fp32 on the host first)
    encoder = VLMEncoder.from_config(qwen25_vl_3b_config(), state_dim=14, image_size=224,
                                     num_views=3, dtype=torch.bfloat16, device=device)  # fmt: skip
    cfg = PolicyConfig(state_dim=14, action_dim=14, chunk=50, cameras=CAMERAS, encoder="vlm",
                       expert=ExpertConfig(width=1024, heads=8, ffn_mult=4.0))  # fmt: skip
    model = FlowMatchingPolicy(cfg, encoder=encoder).to(device=device, dtype=torch.bfloat16)
    model.eval()
    images = torch.randint(0, 255, (1, 3, 3, 224, 224), dtype=torch.uint8, device=device)
    obs = ObservationBatch(torch.randn(1, 14, device=device, dtype=torch.bfloat16),
                           ["insert the peg into the socket"], images)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    gpu = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    return {**measure(model, obs, device, runs), "params_b": round(params / 1e9, 2),
            "expert_layers": len(model.expert.blocks), "chunk": 50, "views": 3,
            "image": 224, "dtype": "bfloat16", "device": gpu}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--vlm", action="store_true", help="also the Qwen2.5-VL-3B shape")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    figures = {
        "bench": "model_latency",
        "flow_steps": 5,
        "small_state_cpu": small("cpu", args.runs, pixels=False),
        "small_pixels_cpu": small("cpu", args.runs, pixels=True),
        "cpu_threads": torch.get_num_threads(),
    }
    if args.device != "cpu":
        figures["small_state_gpu"] = small(args.device, args.runs, pixels=False)
        figures["small_pixels_gpu"] = small(args.device, args.runs, pixels=True)
    if args.vlm:
        figures["vlm_3b"] = vlm(args.device, max(20, args.runs // 4))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
