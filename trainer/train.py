"""Train a small GPT for a fixed wall-clock budget (the editable surface).

In the spirit of karpathy/autoresearch: knobs at the top, then the model, the optimizer
and the loop. Run it with `python train.py`; it reads the train split from
$BILEVEL_DATA_DIR/train (default /data/train), trains for TIME_BUDGET_SECONDS of
training time, saves the model for the trusted evaluator and prints a summary. It never
sees the validation split: val_bpb is computed afterwards by `python -m trainer.evaluate`.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from trainer import harness

# ---------------------------------------------------------------------------------------
# Knobs (units in names or comments)

# Model shape
DEPTH = 8  # transformer blocks
ASPECT_RATIO = 64  # model width = DEPTH * ASPECT_RATIO channels (rounded to HEAD_DIM)
HEAD_DIM = 128  # channels per attention head
WINDOW_PATTERN = "L"  # per-layer attention window, cycled: L = full context, S = half
LOGIT_SOFTCAP = 15.0  # logits squashed to (-cap, cap) with tanh
VALUE_EMBEDS = True  # value embeddings mixed into attention on alternating layers

# Batch and context
SEQ_LEN = 2048  # training context, tokens (evaluation uses the split's fixed seq_len)
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
DEVICE_BATCH_SIZE = 128  # sequences per forward pass; gradient accumulation fills the rest

# Optimizer
EMBEDDING_LR = 0.6  # AdamW, token and value embeddings
UNEMBEDDING_LR = 0.004  # AdamW, output head
MATRIX_LR = 0.04  # Muon, 2-D weights of the blocks
SCALAR_LR = 0.5  # AdamW, per-layer residual scalars
WEIGHT_DECAY = 0.2  # decoupled, Muon matrices only
ADAM_BETAS = (0.8, 0.95)  # AdamW (beta1, beta2)
MUON_MOMENTUM = 0.95  # Nesterov momentum of Muon
NS_STEPS = 5  # Newton–Schulz iterations per Muon step

# Schedule, as fractions of the time budget
WARMUP_RATIO = 0.0  # linear LR warm-up, fraction of the budget
WARMDOWN_RATIO = 0.5  # linear LR warm-down at the end, fraction of the budget
FINAL_LR_FRAC = 0.0  # LR at the end, as a fraction of the peak

# Run
TIME_BUDGET_SECONDS = 300.0  # training wall time, excluding start-up and warm-up steps
WARMUP_STEPS = 10  # first optimizer steps not counted in the budget (compilation, caches)
SEED = harness.seed(42)  # model init, batch order: the controller's trial seed (42 by hand)
MAX_STEPS = 0  # if > 0: stop after this many steps and schedule by steps (reproducible runs)
COMPILE = True  # torch.compile the model (CUDA only)
MAX_LOSS = 20.0  # nats; a training loss above this (or NaN) aborts the run

# ---------------------------------------------------------------------------------------
# Model


def norm(x):
    return F.rms_norm(x, (x.size(-1),))


def apply_rotary(x, cos, sin):
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, n_head, window, value_embed):
        super().__init__()
        self.n_head, self.window = n_head, window
        self.c_q = nn.Linear(dim, dim, bias=False)
        self.c_k = nn.Linear(dim, dim, bias=False)
        self.c_v = nn.Linear(dim, dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)
        self.ve_gate = nn.Parameter(torch.zeros(1)) if value_embed else None

    def forward(self, x, cos, sin, ve):
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, -1)
        k = self.c_k(x).view(B, T, self.n_head, -1)
        v = self.c_v(x).view(B, T, self.n_head, -1)
        if ve is not None:
            v = v + self.ve_gate * ve.view_as(v)
        q, k = norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        window = self.window if self.window > 0 else T
        if window >= T:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # sliding window: a boolean mask (slower kernels than is_causal)
            i = torch.arange(T, device=x.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim, n_head, window, value_embed):
        super().__init__()
        self.attn = Attention(dim, n_head, window, value_embed)
        self.mlp = MLP(dim)

    def forward(self, x, cos, sin, ve):
        x = x + self.attn(norm(x), cos, sin, ve)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, depth, dim, head_dim, max_seq_len):
        super().__init__()
        n_head = dim // head_dim
        windows = [max_seq_len // 2 if WINDOW_PATTERN[i % len(WINDOW_PATTERN)] == "S" else 0
                   for i in range(depth)]
        has_ve = [VALUE_EMBEDS and i % 2 == (depth - 1) % 2 for i in range(depth)]
        self.wte = nn.Embedding(vocab_size, dim)
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(vocab_size, dim) for i in range(depth) if has_ve[i]})
        self.blocks = nn.ModuleList(
            [Block(dim, n_head, windows[i], has_ve[i]) for i in range(depth)])
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.resid_lambdas = nn.Parameter(torch.ones(depth))  # scales the residual stream
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))  # mixes in the embedding stream
        inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_seq_len).float(), inv_freq)
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    @torch.no_grad()
    def init_weights(self):
        dim = self.wte.embedding_dim
        bound = 3**0.5 * dim**-0.5
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                p.zero_()  # each block starts as the identity
            elif p.ndim == 2 and name.startswith("blocks."):
                p.uniform_(-bound, bound)
        self.wte.weight.normal_(0.0, 1.0)
        for emb in self.value_embeds.values():
            emb.weight.uniform_(-bound, bound)
        self.lm_head.weight.normal_(0.0, 0.001)

    def forward(self, idx):
        T = idx.size(1)
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            ve = self.value_embeds[str(i)](idx) if str(i) in self.value_embeds else None
            x = block(x, cos, sin, ve)
        logits = self.lm_head(norm(x)).float()
        return LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)

    def flops_per_token(self):
        """Training FLOPs per token: 6 per matmul weight plus attention scores."""
        dim = self.wte.embedding_dim
        matmul = sum(p.numel() for n, p in self.named_parameters()
                     if p.ndim == 2 and not n.startswith(("wte", "value_embeds")))
        return 6 * matmul + 12 * len(self.blocks) * dim * SEQ_LEN


# ---------------------------------------------------------------------------------------
# Optimizer: Muon for the blocks' matrices, AdamW for everything else


def newton_schulz(G, steps):
    """Approximately orthogonalise G (the polar factor) with a quintic iteration."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if transposed else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then an orthogonalised update scaled to the matrix's aspect ratio."""

    def __init__(self, params, lr, momentum, weight_decay, ns_steps):
        super().__init__(params, dict(lr=lr, momentum=momentum,
                                      weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                buf = state["momentum"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                g = p.grad.lerp(buf, group["momentum"])  # Nesterov
                update = newton_schulz(g, group["ns_steps"])
                scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def build_optimizers(model, dim):
    scale = (dim / 768) ** -0.5  # AdamW LRs were tuned at width 768
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    embeds = [model.wte.weight] + [e.weight for e in model.value_embeds.values()]
    scalars = [p for n, p in model.named_parameters()
               if p.ndim < 2]
    adam = torch.optim.AdamW(
        [dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR * scale),
         dict(params=embeds, lr=EMBEDDING_LR * scale),
         dict(params=scalars, lr=SCALAR_LR)],
        betas=ADAM_BETAS, eps=1e-10, weight_decay=0.0)
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM,
                weight_decay=WEIGHT_DECAY, ns_steps=NS_STEPS)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    """Flat, with optional linear warm-up, then a linear warm-down to FINAL_LR_FRAC."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-8) / WARMUP_RATIO
    if progress < 1.0 - WARMDOWN_RATIO:
        return 1.0
    cooldown = max(0.0, (1.0 - progress) / WARMDOWN_RATIO)
    return cooldown + (1.0 - cooldown) * FINAL_LR_FRAC


# ---------------------------------------------------------------------------------------
# Training loop

torch.manual_seed(SEED)
device = harness.pick_device()
data = harness.train_data()
max_seq_len = max(SEQ_LEN, data.seq_len)
dim = max(HEAD_DIM, DEPTH * ASPECT_RATIO // HEAD_DIM * HEAD_DIM)
model = GPT(data.vocab_size, DEPTH, dim, HEAD_DIM, max_seq_len).to(device)
model.init_weights()
num_params = sum(p.numel() for p in model.parameters())
tokens_per_micro_batch = DEVICE_BATCH_SIZE * SEQ_LEN
grad_accum = max(1, TOTAL_BATCH_SIZE // tokens_per_micro_batch)
optimizers = build_optimizers(model, dim)
forward = torch.compile(model) if COMPILE and device.type == "cuda" else model
batches = harness.device_batches(data, DEVICE_BATCH_SIZE, SEQ_LEN, SEED, device)
print(f"device: {device}  params: {num_params / 1e6:.2f}M  width: {dim}  "
      f"grad_accum: {grad_accum}  tokens/step: {grad_accum * tokens_per_micro_batch}")

clock = harness.TrainingClock(TIME_BUDGET_SECONDS, WARMUP_STEPS, device, MAX_STEPS)
step, loss_value = 0, float("nan")
while not clock.done():
    clock.start_step()
    for _ in range(grad_accum):
        x, y = next(batches)
        with harness.autocast(device):
            logits = forward(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        (loss / grad_accum).backward()
    multiplier = lr_multiplier(clock.progress())
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * multiplier
        opt.step()
    model.zero_grad(set_to_none=True)
    loss_value = loss.item()
    harness.check_loss(loss_value, step, MAX_LOSS)
    clock.end_step()
    step += 1
    if step % 10 == 0 or step == 1:
        print(f"step {step:5d}  loss {loss_value:.4f}  lr x{multiplier:.3f}  "
              f"training {clock.training_seconds:.1f}s")

training_tokens = (step - min(step, WARMUP_STEPS)) * grad_accum * tokens_per_micro_batch
harness.save_model(model, data, device)
harness.finish(
    training_seconds=clock.training_seconds,
    num_steps=step,
    total_tokens=step * grad_accum * tokens_per_micro_batch,
    training_tokens=training_tokens,
    num_params=num_params,
    depth=DEPTH,
    flops_per_token=model.flops_per_token(),
    final_loss=loss_value,
    device=device,
)
