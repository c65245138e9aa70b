"""Token weights of the WMTP algorithms, as pure functions of tensors (METHOD.md).

Every function here runs under `torch.no_grad()`: weights never carry gradient. Shapes use B = batch,
S = sequence length. "Aligned to head k" means entry [b, t] belongs to head k's prediction at position t, whose
target is token x_{t+k+1}. Every algorithm's weights are here: ntp and baseline-mtp `uniform_weights`, critic-wmtp
`critic_weights` of `td_errors`, rho1-wmtp `rho1_weights` of `excess_loss` (and, for select, `select_rescale` or,
chosen over a whole step, `select_top` and `select_scale`), grad-wmtp `grad_weights` of `grad_scores`, normalised
by the running statistics of `ema_update`, grpo-wmtp `grpo_weights` of `group_advantages`.

grad-wmtp (gradient-norm importance; METHOD.md is silent, these are the choices). Head k's entry at t scores
    s_{t,k} = ||softmax(z_{t,k}) - onehot(x_{t+k+1})||_2           (score: logit, the CE gradient w.r.t. the logits)
    s_{t,k} = ||W_out^T (softmax(z_{t,k}) - onehot(x_{t+k+1}))||_2  (score: hidden, w.r.t. the unembedding's input)
in closed form from the head's logits, detached, inside the per-head pass (no extra backward). Per head a running
mean and variance across steps (EMA, momentum m) normalise it:
    z = (s - mu_k) / sigma_k,   w = clip(exp(z / beta), w_min, w_max),   rescaled to mean 1 over valid entries.
The weights of step t use the statistics of steps < t (known before the step, so no extra pass); after step t,
with N, mean and (population) variance of the step's valid scores over every micro-batch and process:
    mu_k <- m mu_k + (1 - m) mean,   sigma_k^2 <- m sigma_k^2 + (1 - m) var   (as BatchNorm's running statistics)
Step 1 has no history: its statistics come from a pass without gradients over the step first, and they are
the EMA's initial value (mu_k = mean, sigma_k^2 = var). Reducing sums over the whole step makes the EMA, and so
the clipped weights, independent of gradient accumulation and process count; the mean-1 rescale (`mean_one`) is
over the whole step's valid entries too: all-reduced head by head in the pass with one micro-batch per process, or
from scores made in a pass without gradients before a step of several micro-batches (grad.py;
`mean_one_over: micro-batch`: over each micro-batch's on each process). A head with no valid entry in a step keeps
its EMA; sigma_k ~ 0 gives z = 0 (w = 1 before clipping), as `zscore` does. A skipped (non-finite) step leaves the EMA as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def uniform_weights(_k: int, _ce: Tensor, mask: Tensor) -> Tensor:
    """ntp and baseline-mtp (and every validation): w = 1 on head k's valid entries (METHOD.md). A `WeightFn`:
    (head k, its CE (B, S), its mask (B, S) bool) -> (B, S) float32."""
    return mask.float()


def shift_to_head(x: Tensor, k: int, fill: float = 0.0) -> Tensor:
    """Align a per-target-token quantity to head k: out[:, t] = x[:, t + k + 1], `fill` beyond the end.

    x: (B, S) indexed by target position j. Returns (B, S).
    """
    out = torch.full_like(x, fill)
    shift = k + 1
    if shift < x.shape[1]:
        out[:, : x.shape[1] - shift] = x[:, shift:]
    return out


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over entries where mask is true (0 when there are none), as a 0-d tensor: no host sync."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1)


def rescale_mean_one(w: Tensor, mask: Tensor, mean: Tensor | float) -> Tensor:
    """The mean-one rescale: w / mean on the entries of `mask`, 0 elsewhere (`mean`: of w over them, taken over
    the batch, the whole optimiser step or, chunked, the head: see `loss.entry_head_loss`)."""
    return torch.where(mask, w / mean, torch.zeros_like(w))


@torch.no_grad()
def zscore(x: Tensor, mask: Tensor) -> Tensor:
    """(x - mean) / std over the entries where `mask` is true (population std); 0 where std is ~0 or mask false.

    x: (B, S) float; mask: (B, S) bool. Returns (B, S) float32. Written without host syncs (GPU-friendly).
    """
    x = x.float()
    mean = masked_mean(x, mask)
    std = masked_mean((x - mean) ** 2, mask).sqrt()
    z = torch.where(std > 1e-8, (x - mean) / std.clamp(min=1e-8), torch.zeros_like(x))
    return torch.where(mask, z, torch.zeros_like(z))


@torch.no_grad()
def td_errors(
    values: Tensor,
    rewards: Tensor,
    completion_mask: Tensor,
    segment_ids: Tensor | None = None,
    example_end: Tensor | None = None,
    *,
    gamma: float = 1.0,
    gae_lambda: float = 0.0,
) -> Tensor:
    """TD error of emitting each completion token, indexed by that token's position j (METHOD.md, critic-wmtp).

    values: (B, S), V(s_t) = V_phi(h_t), the value after reading x_{<=t}.
    rewards: (B, S), the reward R in {0, 1} of the example each position belongs to.
    completion_mask: (B, S) bool, x_j is a completion token (the tokens that are scored).
    segment_ids: (B, S) long, example index inside a packed row (None: one example per row).
    example_end: (B, S) bool, x_j is its example's true final token (None: every piece's last completion token
    is, i.e. nothing was cut by packing or truncation).
    Returns delta: (B, S) float32, zero where x_j is not a completion token (or j = 0).

        delta_j = gamma * V(s_j) - V(s_{j-1})   for a non-final completion token
        delta_T = R - V(s_{T-1})                for the final completion token of its example
    A piece cut off before its example's end keeps the ordinary gamma * V(s_j) - V(s_{j-1}) on its last token (a
    bootstrap, as in truncated GAE): R is paid only where the example really ends (METHOD.md).
    With GAE (Schulman et al. 2016): A_j = sum_i (gamma * lambda)^i * delta_{j+i} within the same piece.
    """
    values, rewards = values.float(), rewards.float()
    b, s = values.shape
    seg = segment_ids if segment_ids is not None else torch.zeros_like(values, dtype=torch.long)
    valid = completion_mask.clone()
    valid[:, 0] = False  # x_0 has no preceding state
    valid[:, 1:] &= seg[:, 1:] == seg[:, :-1]
    nxt_same = torch.zeros_like(valid)
    nxt_same[:, :-1] = completion_mask[:, 1:] & (seg[:, 1:] == seg[:, :-1])
    last = valid & ~nxt_same  # last completion token of its piece
    final = last if example_end is None else last & example_end.bool()
    prev_v = torch.zeros_like(values)
    prev_v[:, 1:] = values[:, :-1]  # V(s_{j-1})
    delta = torch.where(final, rewards - prev_v, gamma * values - prev_v)
    delta = torch.where(valid, delta, torch.zeros_like(delta))
    if gae_lambda == 0.0:
        return delta
    adv = torch.zeros_like(delta)
    running = torch.zeros(b, dtype=delta.dtype, device=delta.device)
    for j in range(s - 1, -1, -1):  # reverse scan; restarts after the last token of each piece
        cont = valid[:, j] & ~last[:, j]
        running = delta[:, j] + gamma * gae_lambda * running * cont
        adv[:, j] = torch.where(valid[:, j], running, torch.zeros_like(running))
        running = torch.where(valid[:, j], running, torch.zeros_like(running))
    return adv


@torch.no_grad()
def critic_weights(
    delta: Tensor,
    mask: Tensor,
    *,
    beta: float = 1.0,
    w_min: float = 0.1,
    w_max: float = 5.0,
    norm: str = "zscore",
    mean_one: bool = True,
    step: StepStats | None = None,
) -> Tensor:
    """critic-wmtp weights for one head: w = clip(exp(norm(delta) / beta), w_min, w_max), rescaled to mean 1.

    delta: (B, S) TD errors aligned to head k (delta[:, t] = delta_{t+k+1}; see `shift_to_head`).
    mask: (B, S) bool, m_{t,k}. Returns w: (B, S) float32, 0 where mask is false.
    `norm` is "zscore" (over this head's valid entries of the batch) or "none". With `mean_one` the clipped
    weights are divided by their mean over valid entries (so they may exceed w_max slightly, as in rho1).
    `step`: the z-score's mean and std and the clipped weights' mean taken over the whole optimiser step (every
    micro-batch and process, `step_stats`) in place of this batch's.
    """
    w = torch.exp(_normalised(delta, mask, norm, step) / beta).clamp(w_min, w_max)
    w = torch.where(mask, w, torch.zeros_like(w))
    if mean_one:
        w = rescale_mean_one(w, mask, masked_mean(w, mask) if step is None else max(step.w_mean, 1e-30))
    return w


@dataclass(frozen=True)
class StepStats:
    """One head's weight statistics over a whole optimiser step (critic-wmtp, grpo-wmtp): the mean and population
    std of the signal its z-score reads (TD errors, advantages) and the mean of its clipped weights (`mean_one`)."""

    mean: float
    std: float
    w_mean: float


# weigh(k, i, stats with w_mean 1) -> head k's clipped weights (B, S) on micro-batch i, before the mean-one rescale
Weigh = Callable[[int, int, StepStats], Tensor]


@torch.no_grad()
def step_stats(
    signal: Sequence[Sequence[Tensor]],
    scored: Sequence[Sequence[Tensor]],
    valid: Sequence[Sequence[Tensor]],
    weigh: Weigh,
    reduce: Callable[[Tensor], list[float]],
) -> list[StepStats]:
    """Each head's `StepStats` over this process's micro-batches and every process: `signal[k][i]` (B, S) is what
    head k's z-score reads on micro-batch i, over the entries `scored[k][i]`; the mean-one rescale averages
    `weigh`'s weights over the entries `valid[k][i]`. `reduce` sums a vector over processes (two calls in all).
    The moments are float64 sums, so the result does not depend on how the step's rows are split into micro-batches
    and processes (METHOD.md, Fair comparison)."""
    n_heads = len(signal)
    moments = torch.zeros(
        n_heads, 4, dtype=torch.float64
    )  # per head: scored count, sum, sum of squares; valid
    for k in range(n_heads):
        for x, m, v in zip(signal[k], scored[k], valid[k], strict=True):
            x = x.double()[m]
            count = x.new_tensor(float(x.numel()))
            moments[k] += torch.stack([count, x.sum(), (x * x).sum(), v.sum().double()]).cpu()
    n, s1, s2, n_valid = (
        torch.tensor(reduce(moments.flatten()), dtype=torch.float64).view(n_heads, 4).unbind(1)
    )
    mean = s1 / n.clamp(min=1)
    std = (s2 / n.clamp(min=1) - mean * mean).clamp(min=0).sqrt()
    w_sums = torch.zeros(n_heads, dtype=torch.float64)
    for k in range(n_heads):
        partial = StepStats(float(mean[k]), float(std[k]), 1.0)
        for i, v in enumerate(valid[k]):
            w_sums[k] += weigh(k, i, partial).double()[v].sum().cpu()
    w_mean = torch.tensor(reduce(w_sums), dtype=torch.float64) / n_valid.clamp(min=1)
    return [StepStats(float(mean[k]), float(std[k]), float(w_mean[k])) for k in range(n_heads)]


@torch.no_grad()
def excess_loss(ce_k: Tensor, ref_ce: Tensor, k: int) -> Tensor:
    """Rho-1 excess loss of head k: e_{t,k} = CE_{t,k} - CE^ref_{t+k+1}; both score the same token x_{t+k+1}.

    ce_k: (B, S), head k's CE at t (target x_{t+k+1}). ref_ce: (B, S), CE^ref_j = -log p_ref(x_j | x_{<j}) indexed
    by target position j (entry 0 unused). Returns (B, S); signed, as in Rho-1 (arXiv 2404.07965).
    """
    return ce_k.detach().float() - shift_to_head(ref_ce.float(), k)


@torch.no_grad()
def select_top(scores: Tensor, keep: int) -> Tensor:
    """The `keep` largest entries of a 1-D tensor (all when keep >= its length), ties broken by position, as bool.

    The same order as `rho1_weights` select over a row-major flattened batch, so a step's scores concatenated
    in (process, micro-batch, row, position) order select exactly what one batch holding them all selects.
    """
    order = scores.float().argsort(descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return rank < keep


@torch.no_grad()
def rho1_weights(
    excess: Tensor,
    mask: Tensor,
    *,
    mode: str = "select",
    head: int = 0,
    ratio: float = 0.6,
    keep_head0: bool = True,
    temperature: float = 1.0,
    eps: float = 0.05,
    w_max: float = 3.0,
) -> Tensor:
    """rho1-wmtp weights for one head from its excess loss (Rho-1, arXiv 2404.07965, §2.2).

    excess: (B, S) e_{t,k} of head `head` (see `excess_loss`); mask: (B, S) bool m_{t,k}.
    Returns w: (B, S) float32, 0 where mask is false.

    select:   among the N valid entries keep the top round(ratio * N) (at least 1) by e: w = 1 kept, 0 otherwise;
              head 0 keeps every valid entry when keep_head0. The head's loss term is the mean CE over kept entries.
    weighted: z = zscore(e) over valid entries; w = N * softmax(z / T) (mean 1); clip to [eps, w_max]; rescale
              to mean 1.
    """
    valid = mask.bool()
    n = valid.sum()  # 0-d tensor: no host sync
    if mode == "select":
        if head == 0 and keep_head0:
            return valid.float()
        keep = (n.double() * ratio).round().clamp(min=1)  # round half to even, like Python's round
        scores = torch.where(
            valid, excess.float(), torch.full_like(excess, float("-inf"), dtype=torch.float32)
        )
        order = scores.flatten().argsort(descending=True, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return ((rank.view_as(excess) < keep) & valid).float()
    if mode == "weighted":
        z = zscore(excess, valid)
        logits = torch.where(valid, z / temperature, torch.full_like(z, float("-inf")))
        w = n * torch.softmax(logits.flatten(), dim=0).view_as(z)
        w = torch.where(valid, w.clamp(eps, w_max), torch.zeros_like(w))
        return rescale_mean_one(w, valid, masked_mean(w, valid))
    raise ValueError(f"unknown rho1 mode {mode!r}")


@torch.no_grad()
def select_rescale(kept: Tensor, valid: Tensor) -> Tensor:
    """rho1 select within one micro-batch: w = N / K on the K kept entries, 0 elsewhere.

    METHOD.md: the head's term is the mean CE over its kept entries, and the loss divides each head's weighted CE
    sum by its N valid entries, so each kept entry weighs N / K. kept: (B, S) 0/1 from `rho1_weights` select;
    valid: 0-d N (a tensor: no host sync). Returns (B, S) float32.
    """
    return kept * (valid / kept.sum().clamp(min=1.0))


def select_scale(valid: int, kept: int) -> float:
    """rho1 select over a whole step (`select_top` over every micro-batch and process): N / K, the weight of each
    kept entry, as in `select_rescale`; 0 when the head has no valid entry (then it keeps none)."""
    return valid / kept if valid else 0.0


@torch.no_grad()
def grad_scores(logits: Tensor, targets: Tensor, w_out: Tensor | None = None) -> Tensor:
    """grad-wmtp score of one head: the L2 norm of d CE / d logits = softmax(z) - onehot(target), in closed form.

    logits: (B, S, V); targets: (B, S) long. With `w_out` (V, D), the unembedding weight, the norm of the
    gradient w.r.t. the unembedding's input instead: ||W_out^T (softmax(z) - onehot)||_2. Returns (B, S) float32.
    """
    g = torch.softmax(logits.float(), dim=-1)  # (B, S, V); becomes the gradient in place
    g.scatter_add_(-1, targets.unsqueeze(-1), torch.full_like(g[..., :1], -1.0))
    if w_out is not None:
        g = (g.to(w_out.dtype) @ w_out).float()  # (B, S, D)
    return torch.linalg.vector_norm(g, dim=-1)


@torch.no_grad()
def score_sums(score: Tensor, mask: Tensor) -> Tensor:
    """(N, sum s, sum s^2) over the valid entries of one head: what `ema_update` needs, summable over
    micro-batches and processes. score, mask: (B, S). Returns (3,) float64: the variance sum s^2 / N - mean^2
    cancels (scores start near 1 with a spread of ~1e-4), which float32 sums would drown in rounding."""
    s = torch.where(mask, score.double(), torch.zeros_like(score, dtype=torch.float64))
    return torch.stack([mask.double().sum(), s.sum(), (s * s).sum()])


def ema_update(
    ema: tuple[float, float] | None, sums: tuple[float, float, float], momentum: float
) -> tuple[float, float] | None:
    """One head's running (mean, variance) after a step whose valid scores sum to `sums` = (N, sum s, sum s^2).

    None (no history): the step's own mean and population variance. A step without valid entries, or with
    non-finite sums, leaves it as it was. Python floats (float64), so a checkpoint stores it exactly.
    """
    n, total, total_sq = sums
    if n <= 0 or not all(map(math.isfinite, sums)):
        return ema
    mean = total / n
    var = max(0.0, total_sq / n - mean * mean)
    if ema is None:
        return mean, var
    return momentum * ema[0] + (1 - momentum) * mean, momentum * ema[1] + (1 - momentum) * var


@torch.no_grad()
def grad_weights(
    score: Tensor,
    mask: Tensor,
    mu: Tensor,
    sigma: Tensor,
    *,
    beta: float = 1.0,
    w_min: float = 0.1,
    w_max: float = 5.0,
    norm: str = "zscore",
    mean_one: bool = True,
) -> Tensor:
    """grad-wmtp weights for one head: w = clip(exp(z / beta), w_min, w_max), z = (s - mu) / sigma, mean 1.

    score: (B, S) s_{t,k} (`grad_scores`); mask: (B, S) bool; mu, sigma: 0-d tensors, the head's running
    statistics (no host sync). `norm: none` uses z = s. Returns (B, S) float32, 0 where mask is false.
    """
    s = score.float()
    if norm == "zscore":
        s = torch.where(sigma > 1e-8, (s - mu) / sigma.clamp(min=1e-8), torch.zeros_like(s))
    return critic_weights(s, mask, beta=beta, w_min=w_min, w_max=w_max, norm="none", mean_one=mean_one)


@torch.no_grad()
def group_advantages(rewards: Tensor, group: Tensor, *, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """GRPO's group-relative advantage of each completion (DeepSeekMath, arXiv 2402.03300, §4.1.2, outcome
    supervision): A_i = (R_i - mean_G R) / (std_G R + eps), over the completions of i's group.

    rewards: (N,) R_i in {0, 1}; group: (N,) long, the group (prompt) of each completion, ids 0..G-1.
    std is the population std (divide by the group's size, not size - 1), as the paper's "normalised by the
    standard deviation of the group rewards". Returns (A (N,) float32, signal (N,) bool): a group whose rewards
    are all equal (one completion, or all right, or all wrong) carries no signal: its A is 0 and signal False.
    """
    r = rewards.float()
    n_groups = int(group.max()) + 1 if group.numel() else 0
    size = torch.zeros(n_groups).index_add_(0, group, torch.ones_like(r))  # (G,)
    mean = torch.zeros(n_groups).index_add_(0, group, r) / size  # (G,)
    var = torch.zeros(n_groups).index_add_(0, group, (r - mean[group]) ** 2) / size  # (G,)
    std = var.sqrt()[group]  # (N,)
    signal = std > 1e-12
    adv = torch.where(signal, (r - mean[group]) / (std + eps), torch.zeros_like(r))
    return adv, signal


@torch.no_grad()
def grpo_weights(
    adv: Tensor,
    signal: Tensor,
    mask: Tensor,
    *,
    beta: float = 1.0,
    w_min: float = 0.1,
    w_max: float = 5.0,
    norm: str = "none",
    mean_one: bool = True,
    step: StepStats | None = None,
) -> Tensor:
    """grpo-wmtp weights for one head: w = clip(exp(norm(A) / beta), w_min, w_max) on every entry whose group
    carries signal, 0 on those whose group does not, then rescaled to mean 1 over the valid entries (of the batch,
    or of the whole optimiser step with `step`, whose z-score statistics are then the step's too).

    adv: (B, S) the advantage A_i of the completion each position belongs to (`group_advantages`); signal: (B, S)
    bool, its group's rewards differ; mask: (B, S) bool m_{t,k} (the target x_{t+k+1} is a trained token of the
    same example, so the whole entry lies in completion i). Returns w: (B, S) float32 >= 0, 0 where mask is false.
    `norm` "zscore" z-scores A over the entries with signal first (as critic's option); "none" (default) keeps A,
    which its group already normalised. A batch without signal gets w = 0 everywhere (no NaN from the rescale).
    """
    live = mask & signal
    w = torch.exp(_normalised(adv, live, norm, step) / beta).clamp(w_min, w_max)
    w = torch.where(live, w, torch.zeros_like(w))
    if mean_one:
        w = rescale_mean_one(
            w, mask, masked_mean(w, mask).clamp(min=1e-12) if step is None else max(step.w_mean, 1e-12)
        )
    return w


def _normalised(x: Tensor, mask: Tensor, norm: str, step: StepStats | None) -> Tensor:
    """x as float32, z-scored with `norm: zscore`: over the entries of `mask`, or with a whole step's mean and std
    (`step`; 0 where that std is ~0, as `zscore`)."""
    x = x.float()
    if norm != "zscore":
        return x
    if step is None:
        return zscore(x, mask)
    return (x - step.mean) / step.std if step.std > 1e-8 else torch.zeros_like(x)
