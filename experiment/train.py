"""The experiment: a small modern GPT trained for a fixed time budget, then handed to the server's evaluator.

THIS is the one file the agent edits. Everything is fair game (model, optimizer, hyperparameters, batch
size) except prepare.py. The contract: call prepare.training_starts() right before timed training, train
for TIME_BUDGET seconds, then prepare.save_model(model): the server times the training itself and scores
the handed-over model (model(idx) -> logits) on data this run never sees. Run: `python experiment/train.py`.
"""

import time

T_START = time.time()  # total_seconds counts from here, imports included

import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # prepare.py sits next to this file
from prepare import (  # noqa: E402
    MAX_SEQ_LEN,
    SEED,
    TIME_BUDGET,
    get_device,
    load_tokenizer,
    make_dataloader,
    save_model,
    training_starts,
)

DEVICE = get_device()
ON_GPU = DEVICE.type == "cuda"


def cpu_has_bf16():
    """Whether this is a CPU with bfloat16 matrix instructions (AVX512-BF16 or AMX); others emulate it slowly."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return DEVICE.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


TINY = os.environ.get("AUTORESEARCH_MODEL_SIZE", "") == "tiny"  # smallest model, for smoke tests

# ---------------------------------------------------------------------------------------------------------
# Hyperparameters. Device-independent ones are plain literals so tools can find and scale them.
# ---------------------------------------------------------------------------------------------------------
# Model size follows the device: a 2-core CPU trains ~3M parameters (2M of them embeddings) usefully in a
# minute. CPU defaults were tuned with 60 s runs on Shakespeare BPE-8192: batch 4 beat 8 (more steps),
# width 192 / depth 3 and depth 6 were no better, 2x or 0.5x learning rates no better.
DEPTH = 1 if TINY else (8 if ON_GPU else 4)  # transformer blocks
WIDTH = 32 if TINY else (512 if ON_GPU else 128)  # model dimension
HEAD_DIM = 16 if TINY else 64  # channels per attention head
BATCH_SIZE = 2 if TINY else (64 if ON_GPU else 4)  # sequences per step
SEQ_LEN = 64 if TINY else MAX_SEQ_LEN  # tokens per training sequence (evaluation always uses MAX_SEQ_LEN)
MATRIX_LR = 0.02  # Muon learning rate for the 2-D weights inside blocks
EMBEDDING_LR = 0.3  # AdamW learning rate for the input embedding
UNEMBEDDING_LR = 0.008  # AdamW learning rate for the output head
WEIGHT_DECAY = 0.0  # AdamW weight decay (embedding and head; Muon has none)
ADAM_BETA_ONE = 0.8  # AdamW beta1
ADAM_BETA_TWO = 0.95  # AdamW beta2
MUON_MOMENTUM = 0.95  # Muon momentum (Nesterov)
WARMUP_RATIO = 0.02  # fraction of the time budget spent ramping the LR up
WARMDOWN_RATIO = 0.5  # fraction of the time budget spent decaying the LR to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0  # LR multiplier at the end of the budget
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap): keeps early training stable
LOSS_CHUNK = 8192 if ON_GPU else 256  # tokens per slice of head + loss; 256 x 8192 logits fit a CPU's cache
ROPE_BASE = 10000.0  # rotary embedding base frequency
COMPILE = ON_GPU  # torch.compile: pays off on CUDA; on the 2-core CPU the first step took 38 s to compile and
# later steps were no faster than eager (measured with a 20 s budget), so it is off off-GPU.
BF16 = ON_GPU or cpu_has_bf16()  # matmuls in bfloat16 under autocast; on this 2-core CPU (AMX) steps took 0.77x
SKIP_STEPS = 10 if COMPILE else 0  # first steps not counted in the budget: only compilation needs excusing


# ---------------------------------------------------------------------------------------------------------
# Model: rotary attention with QK-norm, parameter-free RMSNorm, ReLU^2 MLP, untied embeddings.
# Untied because the input embedding wants a large LR and the output head a small one (as in nanochat).
# ---------------------------------------------------------------------------------------------------------
def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, device):
    inv_freq = 1.0 / (ROPE_BASE ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]  # (1, 1, T, head_dim/2)


def apply_rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.n_head, self.head_dim = dim // head_dim, head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(norm(q), cos, sin), apply_rotary(norm(k), cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, dim, head_dim):
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.fc = nn.Linear(dim, 4 * dim, bias=False)
        self.fc_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x, cos, sin):
        x = x + self.attn(norm(x), cos, sin)
        return x + self.fc_proj(F.relu(self.fc(norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, head_dim):
        super().__init__()
        self.head_dim = head_dim
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim) for _ in range(depth))
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            bound = math.sqrt(3.0 / block.fc.in_features)  # uniform with std 1/sqrt(fan_in)
            for w in (block.attn.qkv.weight, block.fc.weight):
                nn.init.uniform_(w, -bound, bound)
            nn.init.zeros_(block.attn.proj.weight)  # residual branches start as identity
            nn.init.zeros_(block.fc_proj.weight)

    def head(self, x):
        """Logits softcapped to (-cap, cap): cap * tanh(lm_head(x) / cap), the division done on the narrow side."""
        return LOGIT_SOFTCAP * self.lm_head(x / LOGIT_SOFTCAP).float().tanh_()

    def forward(self, idx, targets=None, reduction="mean"):
        cos, sin = rotary_tables(idx.size(1), self.head_dim, idx.device)
        x = norm(self.wte(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        x = norm(x)
        if targets is None:
            return self.head(x)
        # The head, softcap and loss LOSS_CHUNK tokens at a time: the same sums, in cache-sized slices.
        rows, targets = x.flatten(0, 1).split(LOSS_CHUNK), targets.reshape(-1).split(LOSS_CHUNK)
        losses = torch.cat(
            [F.cross_entropy(self.head(r), t, reduction="none") for r, t in zip(rows, targets, strict=True)]
        )
        return losses if reduction == "none" else losses.mean()


# ---------------------------------------------------------------------------------------------------------
# Optimizer: Muon (orthogonalised momentum) for the 2-D block matrices, AdamW for embedding and head.
# Muon makes much more progress per step than AdamW on hidden matrices, which matters most when a
# budget allows only a few hundred steps; embeddings and the head are not matrices in that sense.
# ---------------------------------------------------------------------------------------------------------
def orthogonalize(g, steps=5):
    """Approximate U V^T of g = U S V^T with a quintic Newton-Schulz iteration (tuned coefficients)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(g.dtype)


class Muon:
    def __init__(self, params, lr, momentum):
        self.param_groups, self.state = [dict(params=list(params), lr=lr, momentum=momentum)], {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p not in self.state:
                    self.state[p] = torch.zeros_like(p)
                buf = self.state[p]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = orthogonalize(p.grad.lerp(buf, group["momentum"]))
                p.add_(update, alpha=-group["lr"] * max(1.0, p.size(0) / p.size(1)) ** 0.5)


class AdamW:
    """Adam with decoupled weight decay, written out: the first torch.optim optimizer of a process imports
    torch._dynamo, which costs every CPU experiment about a second."""

    def __init__(self, param_groups, betas, eps, weight_decay):
        self.param_groups = [dict(group, betas=betas, eps=eps, weight_decay=weight_decay) for group in param_groups]
        self.state, self.steps = {}, 0

    @torch.no_grad()
    def step(self):
        self.steps += 1
        for group in self.param_groups:
            (beta1, beta2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p not in self.state:
                    self.state[p] = (torch.zeros_like(p), torch.zeros_like(p))
                m, v = self.state[p]
                m.lerp_(p.grad, 1 - beta1)
                v.lerp_(p.grad.square(), 1 - beta2)
                denom = (v / (1 - beta2**self.steps)).sqrt_().add_(group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**self.steps))


def make_optimizers(model):
    matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
    adam_groups = [
        dict(params=[model.wte.weight], lr=EMBEDDING_LR),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR),
    ]
    adam = AdamW(adam_groups, betas=(ADAM_BETA_ONE, ADAM_BETA_TWO), eps=1e-10, weight_decay=WEIGHT_DECAY)
    optimizers = [adam, Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM)]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    if progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    frac = (1.0 - progress) / WARMDOWN_RATIO
    return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(0.0, frac)


# ---------------------------------------------------------------------------------------------------------
# Reporting helpers
# ---------------------------------------------------------------------------------------------------------
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "L4": 121e12,
    "4090": 165e12,
}  # dense bf16 FLOP/s by device name


def device_peak_flops():
    if not ON_GPU:
        return None  # CPU and MPS peaks vary too much to guess honestly
    name = torch.cuda.get_device_name(DEVICE)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def flops_per_token(model):
    """6 N for the matrix multiplies plus the attention score/value products (forward + backward)."""
    n_matmul = sum(p.numel() for p in model.parameters()) - model.wte.weight.numel()
    return 6 * n_matmul + 12 * DEPTH * WIDTH * SEQ_LEN


def peak_memory_mb():
    if ON_GPU:
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # macOS reports bytes, Linux KiB


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------
def train(model, optimizers, loader, autocast):
    """Train until the budget is spent on the server's clock (wall time since training_starts()); the last step
    is the one that ends nearest the budget, so a run neither overruns it nor leaves a step's time unused."""
    step, training_time, tokens, epoch, started = 0, 0.0, 0, 1, None
    while True:
        if step == SKIP_STEPS:
            training_starts()  # the server's clock starts here; the steps before (compilation) are free
            started = time.time()
        t0 = time.time()
        x, y, epoch = next(loader)
        with autocast():
            loss = model(x, y)
        loss.backward()
        lrm = lr_multiplier(training_time / TIME_BUDGET)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lrm
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = loss.item()  # also synchronises the device, so the timing below is real
        dt = time.time() - t0
        step += 1
        if not math.isfinite(loss_value) or loss_value > 100:
            fail(f"loss is {loss_value} at step {step}")
        if started is not None:
            training_time = time.time() - started
            tokens += x.numel()
        print(
            f"step {step} | loss {loss_value:.6f} | lrm {lrm:.3f} | tok/s {x.numel() / dt:.0f} | "
            f"elapsed {training_time:.1f}s | remaining {max(0.0, TIME_BUDGET - training_time):.1f}s",
            flush=True,
        )
        if started is not None and training_time + dt / 2 >= TIME_BUDGET:  # another step would end farther off
            return step, training_time, tokens, epoch


def main():
    torch.manual_seed(SEED)
    tokenizer = load_tokenizer()
    model = GPT(tokenizer.vocab_size, DEPTH, WIDTH, HEAD_DIM).to(DEVICE)
    optimizers = make_optimizers(model)
    compiled = torch.compile(model) if COMPILE else model
    if BF16:

        def autocast():
            return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    else:
        from contextlib import nullcontext as autocast
    loader = make_dataloader(tokenizer, BATCH_SIZE, SEQ_LEN, "train", DEVICE, seed=SEED)
    steps, training_time, tokens, epoch = train(compiled, optimizers, loader, autocast)
    save_model(model)  # the server's clock stops; its evaluator scores this model on the validation split
    peak = device_peak_flops()
    print("---")
    print(f"training_seconds: {training_time:.1f}")
    print(f"total_seconds:    {time.time() - T_START:.1f}")
    print(f"peak_memory_mb:   {peak_memory_mb():.1f}")
    if peak:
        print(f"mfu_percent:      {100 * flops_per_token(model) * tokens / training_time / peak:.2f}")
    print(f"total_tokens_M:   {tokens / 1e6:.3f}")
    print(f"epoch:            {epoch}")
    print(f"num_steps:        {steps}")
    print(f"num_params_M:     {sum(p.numel() for p in model.parameters()) / 1e6:.3f}")
    print(f"depth:            {DEPTH}")
    print(f"device:           {DEVICE.type}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip the interpreter's ~0.5 s teardown of torch: every experiment pays it otherwise
