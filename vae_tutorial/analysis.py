"""Why VAE samples look like blobs: the computations of notebook 7, each tested.

    what the code carries detail_energy, image_elbos, paired_difference
    the prior hole        encode_dataset, aggregate_log_density, aggregate_kl, hole_scores,
                          two_sample_test (a classifier tells prior draws from codes),
                          prior_vs_codes (that test for any prior), fit_diagonal_prior
    rate and distortion   rate_distortion (from an evaluation)
    the amortization gap  refine_posterior (with its ELBO trace), gaussian_elbo, gaps
    notebook 6            iwae_by_k (the bound against k), nearest_class_mean, kl_parts

All of them work on single-latent models (z ~ N(0, I), q(z|x) a diagonal Gaussian): ConvVAE,
SeedVAE and the linear-Gaussian reference model.
"""

from __future__ import annotations

import math

import torch

from . import losses
from .evaluate import log_mean_exp
from .model import eval_mode, reparameterize


@torch.no_grad()
def encode_dataset(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(means, log_vars) of q(z|x) for every image of an iterable of (x, label) batches, (N, D)
    each, on the CPU; the model is put in eval mode and restored."""
    with eval_mode(model):
        out = [model.encode(x) for x, _ in batches]
    return (torch.cat([m for m, _ in out]).cpu(), torch.cat([lv for _, lv in out]).cpu())


@torch.no_grad()
def aggregate_log_density(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor,
                          chunk: int = 256) -> torch.Tensor:
    """log q(z) of the aggregate posterior q(z) = (1/N) sum_n q(z | x_n), a mixture of the N
    encoder Gaussians, at each row of z: (M, D) -> (M,). Computed in float64, in chunks of z."""
    means, log_vars = means.double(), log_vars.double()
    out = []
    for start in range(0, len(z), chunk):
        zc = z[start:start + chunk].double()[:, None]  # (m, 1, D)
        log_q = losses.normal_log_prob(zc, means[None], log_vars[None]).sum(-1)  # (m, N)
        out.append(torch.logsumexp(log_q, dim=1) - math.log(len(means)))
    return torch.cat(out)


def sample_aggregate(means: torch.Tensor, log_vars: torch.Tensor, n: int,
                     generator: torch.Generator | None = None, return_images: bool = False):
    """n draws from the aggregate posterior: pick an image, then z ~ q(z | that image);
    with return_images, also the index of each draw's image, (n,) (the same draws)."""
    pick = torch.randint(len(means), (n,), generator=generator)
    eps = torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)
    z = means[pick] + torch.exp(0.5 * log_vars[pick]) * eps
    return (z, pick) if return_images else z


def clustered_se(values: torch.Tensor, groups: torch.Tensor | None = None) -> float:
    """Standard error of the mean of values, (n,), counting rows that share a group id as
    one cluster (the cluster-robust estimate); groups=None: every row independent."""
    values = values.double()
    if groups is None:
        groups = torch.arange(len(values))
    dev = values - values.mean()
    sums = torch.zeros(int(groups.max()) + 1, dtype=dev.dtype).index_add_(0, groups, dev)
    return float(sums.pow(2).sum().sqrt() / len(values))


@torch.no_grad()
def aggregate_kl(means: torch.Tensor, log_vars: torch.Tensor, num_samples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Monte Carlo KL(q(z) || p(z)) of the aggregate posterior against N(0, I), in nats, with
    its standard error: the mean of log q(z) - log p(z) over draws z ~ q(z)."""
    g = torch.Generator().manual_seed(seed)
    z = sample_aggregate(means.double(), log_vars.double(), num_samples, g)
    terms = aggregate_log_density(z, means, log_vars) - \
        losses.standard_normal_log_prob(z).sum(-1)
    return float(terms.mean()), float(terms.std() / math.sqrt(num_samples))


@torch.no_grad()
def hole_scores(z: torch.Tensor, means: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """log q(z) - log p(z) at each row of z, (M,): very negative where the prior puts mass
    that no image's posterior covers (a hole), positive where the posteriors crowd."""
    return aggregate_log_density(z, means, log_vars) - \
        losses.standard_normal_log_prob(z.double()).sum(-1)


def rate_distortion(evaluation: dict) -> dict:
    """Rate (KL, nats), distortion (-E log p(x|z), nats) and their sum -ELBO, from an
    `evaluate` result or its JSON."""
    rate, distortion = evaluation["kl"], -evaluation["reconstruction"]
    return {"rate": rate, "distortion": distortion, "negative_elbo": -evaluation["elbo"]}


def gaussian_elbo(model, x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor,
                  num_samples: int = 1) -> torch.Tensor:
    """The ELBO of each image under a given diagonal Gaussian q = N(mean, exp(log_var)):
    E_q[log p(x|z)] from num_samples reparameterized draws, minus the closed-form KL. (B,)."""
    rec = 0.0
    for _ in range(num_samples):
        rec = rec + model.log_likelihood(x, reparameterize(mean, log_var))
    return rec / num_samples - losses.gaussian_kl(mean, log_var)


def refine_posterior(model, x: torch.Tensor, steps: int = 100, lr: float = 0.05,
                     num_samples: int = 4, init: tuple | None = None,
                     trace: list | None = None):
    """Each image's own Gaussian q, optimised for its ELBO by Adam from the encoder's output
    (or `init`): returns (mean, log_var), detached. The learning rate decays along a cosine,
    so the last steps average out the Monte Carlo noise of the gradient. The model's weights
    are not changed (their gradients are not even computed). With a list as `trace`, the
    mean ELBO over the images before each step (num_samples draws each) is appended to it."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with eval_mode(model):
            with torch.no_grad():
                m0, lv0 = init if init is not None else model.encode(x)
            mean = m0.detach().clone().requires_grad_(True)
            log_var = lv0.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([mean, log_var], lr=lr)
            for step in range(steps):
                for g in opt.param_groups:
                    g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
                loss = -gaussian_elbo(model, x, mean, log_var, num_samples).sum()
                if trace is not None:
                    trace.append(-loss.item() / len(x))
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
    return mean.detach(), log_var.detach()


@torch.no_grad()
def gaps(model, x: torch.Tensor, refined: tuple, num_samples: int = 1000,
         elbo_samples: int = 100, chunk: int = 256) -> dict:
    """Split log p(x) - ELBO (Cremer, Li & Duvenaud, 2018), in nats per image, averaged:
        log p(x)          IWAE with num_samples draws from the refined q
        iwae_encoder      IWAE with num_samples draws from the encoder's q (to compare)
        ELBO of the refined q, of the encoder's q (each from elbo_samples draws)
        approximation gap = log p(x) - ELBO(refined): the best Gaussian's shortfall
        amortization gap  = ELBO(refined) - ELBO(encoder): the encoder's shortfall.
    A refinement that stops short of the best Gaussian q* makes the amortization gap too
    small and the approximation gap too large; IWAE, below log p(x), makes the latter too
    small. So the amortization gap is a lower bound; the approximation gap is neither."""
    with eval_mode(model):
        enc = model.encode(x)
        elbo_enc = gaussian_elbo(model, x, *enc, num_samples=elbo_samples)
        elbo_ref = gaussian_elbo(model, x, *refined, num_samples=elbo_samples)
        log_px = log_mean_exp(model.log_weights(x, num_samples, chunk, posterior=refined))
        iwae_enc = log_mean_exp(model.log_weights(x, num_samples, chunk))
    out = {"log_px": log_px, "iwae_encoder": iwae_enc, "elbo_refined": elbo_ref,
           "elbo_encoder": elbo_enc}
    out = {k: float(v.double().mean()) for k, v in out.items()}
    out["approximation_gap"] = out["log_px"] - out["elbo_refined"]
    out["amortization_gap"] = out["elbo_refined"] - out["elbo_encoder"]
    return out


# --- what the code carries, and prior draws against codes ----------------------------------------

def detail_energy(images: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between horizontally and vertically neighbouring pixels of
    each image, (N, C, H, W) -> (N,): the power of its finest detail (0 for a flat image,
    1 for a black-and-white checkerboard)."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return 0.5 * (dx.pow(2).flatten(1).mean(1) + dy.pow(2).flatten(1).mean(1))


@torch.no_grad()
def image_elbos(model, batches, num_samples: int = 1) -> torch.Tensor:
    """The ELBO of every image of an iterable of (x, label) batches, (N,) nats, each from
    num_samples draws of the encoder's q; the model is put in eval mode and restored."""
    with eval_mode(model):
        out = [gaussian_elbo(model, x, *model.encode(x), num_samples=num_samples)
               for x, _ in batches]
    return torch.cat(out).double().cpu()


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Mean of a - b over paired items (the same images) and its standard error, sd / sqrt(n):
    the sampling error of the difference over those items, not over training runs."""
    d = (a - b).double()
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


class _Classifier(torch.nn.Module):
    """Standardise z with the training set's statistics, then logistic regression on
    (z, z^2) (hidden = 0) or a one-hidden-layer MLP: the logit that z came from b."""

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor, hidden: int):
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)
        d = len(shift)
        self.net = (torch.nn.Linear(2 * d, 1) if hidden == 0 else torch.nn.Sequential(
            torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)))
        self.hidden = hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = (z - self.shift) / self.scale
        if self.hidden == 0:
            u = torch.cat([u, u.pow(2)], dim=1)
        return self.net(u).squeeze(1)


def two_sample_test(a_train: torch.Tensor, b_train: torch.Tensor, a_test: torch.Tensor,
                    b_test: torch.Tensor, hidden: int = 0, steps: int = 500, lr: float = 0.01,
                    weight_decay: float = 1e-4, seed: int = 0,
                    a_groups: torch.Tensor | None = None,
                    b_groups: torch.Tensor | None = None) -> dict:
    """Classifier two-sample test (Lopez-Paz & Oquab, 2017): train a classifier to tell rows
    of a from rows of b on the training sets (full-batch Adam, classes weighted equally),
    and measure it on the held-out test sets. Returns the balanced held-out accuracy (the
    mean of the two classes' accuracies: 0.5 when a and b are the same distribution, 1 when
    they never overlap), its standard error over the test rows, and the classifier (a
    module: z (M, D) -> logit that z came from b, (M,)). hidden = 0: logistic regression
    on z and z^2, which sees differences of mean and of spread per dimension; hidden > 0:
    an MLP with that many hidden units, which can see more. a_groups, b_groups: an id per
    test row (for example the image a code was drawn from); rows sharing an id are not
    independent, and the standard error counts each id as one cluster (`clustered_se`)."""
    torch.manual_seed(seed)
    a_train, b_train = a_train.float(), b_train.float()
    both = torch.cat([a_train, b_train])
    clf = _Classifier(both.mean(0), both.std(0).clamp_min(1e-6), hidden)
    labels = torch.cat([torch.zeros(len(a_train)), torch.ones(len(b_train))])
    weights = torch.cat([torch.full((len(a_train),), 0.5 / len(a_train)),
                         torch.full((len(b_train),), 0.5 / len(b_train))])
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(
            clf(both), labels, reduction="none") * weights).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        right_a = (clf(a_test.float()) < 0).double()  # (M_a,) 1 where classified right
        right_b = (clf(b_test.float()) > 0).double()  # (M_b,)
    accuracy = float(0.5 * (right_a.mean() + right_b.mean()))
    se = 0.5 * math.hypot(clustered_se(right_a, a_groups), clustered_se(right_b, b_groups))
    return {"accuracy": accuracy, "se": se, "n_test": len(a_test) + len(b_test),
            "classifier": clf.eval().requires_grad_(False)}


def prior_vs_codes(sample_prior, codes_train: torch.Tensor, codes_test: torch.Tensor,
                   test_images: torch.Tensor | None = None, **kw) -> dict:
    """Classifier two-sample test of a prior against the codes of real images.

    sample_prior(n) -> (n, D): draws of the prior under test (N(0, I), a tempered or fitted
    one, a hierarchical VAE's prior with all groups flattened into one row, ...).
    codes_train (M, D), codes_test (K, D): draws z ~ q(z|x) of two disjoint sets of images,
    flattened the same way; test_images (K,): the image each test code was drawn from.
    The classifier learns prior draws (as many as codes_train) against codes_train, then is
    scored on fresh prior draws (as many as codes_test) against codes_test, codes of images it
    never saw. The prior's draws are made training set first, in that order. Returns
    `two_sample_test`'s dict (balanced held-out accuracy, its standard error clustered by
    test image, the classifier); **kw go to two_sample_test (hidden, steps, seed, ...)."""
    prior_train = sample_prior(len(codes_train))
    prior_test = sample_prior(len(codes_test))
    return two_sample_test(prior_train, codes_train, prior_test, codes_test,
                           b_groups=test_images, **kw)


def fit_diagonal_prior(means: torch.Tensor, log_vars: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """The diagonal Gaussian with the aggregate posterior's mean and variance per dimension:
    for posteriors q(z|x_n) = N(means[n], exp(log_vars[n])), (N, D) each, the mean
    m_d = E_n[mu_d(x_n)] and, by the law of total variance, v_d = Var_n[mu_d(x_n)] +
    E_n[sigma_d^2(x_n)] (population variance over the N images). Returns (m, v), (D,) each.
    A prior N(m, diag v) matches q(z) in every dimension's first two moments, and in nothing
    else: not the correlations between dimensions, not the shape of each marginal."""
    means, log_vars = means.double(), log_vars.double()
    return means.mean(0), means.var(0, unbiased=False) + log_vars.exp().mean(0)


# Notebook 6: the IWAE bound against k, a nearest-class-mean probe, the two parts of the KL.

def iwae_by_k(log_w: torch.Tensor, ks) -> dict[int, torch.Tensor]:
    """Per-item estimates of L_k (Burda et al., 2015) for each k of ks from one draw of K
    log-weights, (K, B) -> {k: (B,)}: the IWAE estimate averaged over the K // k disjoint
    groups of k weights, unbiased for L_k; k = 1 is the mean log-weight (an ELBO estimate).
    Each k must divide K. Computed in float64."""
    out = {}
    for k in ks:
        if k < 1 or len(log_w) % k:
            raise ValueError(f"k = {k} does not divide the {len(log_w)} log-weights")
        groups = log_w.double().reshape(len(log_w) // k, k, *log_w.shape[1:])
        out[k] = (torch.logsumexp(groups, dim=1) - math.log(k)).mean(0)
    return out


def nearest_class_mean(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                       test_labels: torch.Tensor) -> tuple[float, float]:
    """Held-out accuracy of the nearest-class-mean rule (each test row takes the label of the
    closest, in Euclidean distance, mean of a class's training rows) and its binomial standard
    error sqrt(a (1 - a) / n). Rows are flattened: images and codes work alike."""
    train, test = train.flatten(1).double(), test.flatten(1).double()
    classes = train_labels.unique()  # sorted
    centres = torch.stack([train[train_labels == c].mean(0) for c in classes])
    predicted = classes[torch.cdist(test, centres).argmin(1)]
    accuracy = float((predicted == test_labels).double().mean())
    return accuracy, math.sqrt(accuracy * (1 - accuracy) / len(test))


def kl_parts(mean: torch.Tensor, log_var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(N(mean, exp(log_var)) || N(0, I)) of each row split in two, (B,) each: the means'
    part (1/2) sum mean^2 and the variances' part (1/2) sum (var - 1 - log var), which is
    zero only at unit variance. They add up to losses.gaussian_kl."""
    mean, log_var = mean.double(), log_var.double()
    return 0.5 * mean.pow(2).sum(-1), 0.5 * (log_var.exp() - 1 - log_var).sum(-1)
