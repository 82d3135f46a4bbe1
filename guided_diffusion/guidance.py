"""Guidance: steering a sampler toward a condition c by a scaled gradient of log p(c | x_t).

The guide API (see docs/guidance.md): a guide is a callable

    guide(x, t, prediction, **model_kwargs) -> gradient [N, C, H, W]

x: x_t [N, C, H, W]; t: [N], the timesteps the model sees (original indices, scaled with
--rescale_timesteps); prediction: the model's prediction before this guide (unguided, except that
guides without on_model_output see it after the on_model_output guides' shift), a dict of tensors shaped like x:
"eps" (noise), "pred_xstart" (x_0, clipped when clip_denoised), "alpha_bar" (alpha_bar_t, [N, 1, ...])
and, when classifier-free guidance ran the unconditional branch, "eps_uncond"; model_kwargs: the
model's keyword arguments (e.g. y). It returns scale * grad_{x_t} log p(c | x_t).

The gradient enters the sampler as released: DDPM adds variance * gradient to the mean
(`shift_mean`); DDIM and DPM-Solver++ replace eps by eps - sqrt(1 - alpha_bar_t) * gradient
(`shift_score`), eps read from the clipped x_0. A guide with `on_model_output = True` (classifier-free
guidance) instead shifts the model's raw noise prediction, before x_0 is derived and clipped, under
every sampler (as GLIDE and DiT combine eps); its prediction's "pred_xstart" is then unclipped. A
plain function is a guide too.
"""

import functools
import operator

import torch as th
import torch.nn.functional as F

from .schedules import gather


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021): scale * grad log softmax(classifier(x_t, t))[y].

    classifier(x [N, C, H, W], t [N]) -> logits [N, K]; the target y comes from model_kwargs["y"].
    """

    on_model_output = False

    def __init__(self, classifier, scale):
        self.classifier = classifier
        self.scale = scale

    def __call__(self, x, t, prediction=None, y=None, **model_kwargs):
        if y is None:
            raise ValueError("classifier guidance needs target labels: pass model_kwargs['y']")
        with th.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t).float(), dim=-1)
            selected = log_probs[th.arange(len(y)), y.view(-1)]
            return th.autograd.grad(selected.sum(), x_in)[0] * self.scale


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2021): eps = eps_u + scale (eps_c - eps_u).

    Needs a model trained with --class_dropout_prob > 0: its label null_class is the unconditional
    branch. The sampler then runs [x; x] with labels [y; null_class] in one batched forward; the
    gradient of the implicit classifier, (scale - 1) (eps_u - eps_c) / sqrt(1 - alpha_bar_t), shifts
    the model's raw eps (on_model_output), before x_0 is derived and clipped. scale = 1 is plain
    conditional sampling; learned variances come from the conditional branch.
    """

    on_model_output = True

    def __init__(self, scale, null_class):
        if null_class is None:
            raise ValueError(
                "classifier-free guidance needs a model with a null class: train it with "
                "--class_dropout_prob > 0 and pass model.null_class"
            )
        self.scale = scale
        self.null_class = null_class

    def __call__(self, x, t, prediction, **model_kwargs):
        difference = prediction["eps_uncond"] - prediction["eps"]
        return (self.scale - 1) * difference / (1 - prediction["alpha_bar"]).sqrt()


class CondFnGuidance:
    """The release's cond_fn(x, t, **model_kwargs) -> scaled gradient, as a guide."""

    on_model_output = False

    def __init__(self, cond_fn):
        self.cond_fn = cond_fn

    def __call__(self, x, t, prediction, **model_kwargs):
        return self.cond_fn(x, t, **model_kwargs)


def as_guides(guidance=(), cond_fn=None):
    """A tuple of guides from a guide, a sequence of guides and/or a release-style cond_fn."""
    guides = (guidance,) if callable(guidance) else tuple(guidance)
    return guides + ((CondFnGuidance(cond_fn),) if cond_fn is not None else ())


def shift_mean(prediction, gradient):
    """Guided DDPM mean (Dhariwal & Nichol Alg. 1): mean + variance * gradient."""
    return prediction["mean"].float() + prediction["variance"] * gradient.float()


def shift_score(schedule, prediction, x, t, gradient):
    """Guided score (Dhariwal & Nichol Alg. 2): eps <- eps - sqrt(1 - alpha_bar_t) * gradient.

    eps is read from prediction["pred_xstart"]; returns a copy with "pred_xstart" and "mean"
    recomputed from the new eps.
    """
    alpha_bar = gather(schedule.alphas_cumprod, t, x.shape)
    eps = schedule.eps_from_xstart(x, t, prediction["pred_xstart"])
    guided_eps = eps - (1 - alpha_bar).sqrt() * gradient
    guided = dict(prediction, pred_xstart=schedule.xstart_from_eps(x, t, guided_eps))
    guided["mean"] = schedule.posterior(guided["pred_xstart"], x, t)[0]
    return guided


class GuidedDenoiser:
    """denoise(x, t) -> {"mean", "variance", "log_variance", "pred_xstart"}: a model bound to a
    denoiser.Denoiser, with guides applied. What samplers call.

    guides: guide callables (above); on: "mean" (DDPM) or "score" (DDIM, DPM-Solver++), where guides
    without on_model_output act. model_kwargs go to the model and to every guide.
    """

    def __init__(self, denoiser, model, guides=(), *, on="score", clip_denoised=True, denoised_fn=None,
                 model_kwargs=None):
        if on not in ("mean", "score"):
            raise ValueError(f"guidance acts on the 'mean' or the 'score', got {on!r}")
        self.denoiser = denoiser
        self.schedule = denoiser.schedule
        self.model = model
        self.clip_denoised = clip_denoised
        self.denoised_fn = denoised_fn
        self.model_kwargs = model_kwargs or {}
        self.output_guides = [g for g in guides if getattr(g, "on_model_output", False)]
        others = [g for g in guides if not getattr(g, "on_model_output", False)]
        self.score_guides = others if on == "score" else []
        self.mean_guides = others if on == "mean" else []
        null_classes = {g.null_class for g in guides if isinstance(g, ClassifierFreeGuidance)}
        if len(null_classes) > 1:
            raise ValueError(f"one classifier-free guide at a time, got null classes {sorted(null_classes)}")
        self.null_class = null_classes.pop() if null_classes else None

    def __call__(self, x, t):
        output, uncond_output = self._forward(x, t)
        if self.output_guides:
            raw = {"pred_xstart": self.denoiser.xstart(self.denoiser.split(output, x)[0], x, t)}
            gradient = self._gradient(self.output_guides, x, t, output, uncond_output, raw)
            output = self._shift_output(output, x, t, gradient)
        prediction = self.denoiser.predict(output, x, t, clip_denoised=self.clip_denoised,
                                           denoised_fn=self.denoised_fn)
        if self.score_guides:
            gradient = self._gradient(self.score_guides, x, t, output, uncond_output, prediction)
            prediction = shift_score(self.schedule, prediction, x, t, gradient)
        if self.mean_guides:
            gradient = self._gradient(self.mean_guides, x, t, output, uncond_output, prediction)
            prediction = dict(prediction, mean=shift_mean(prediction, gradient))
        return prediction

    def _shift_output(self, output, x, t, gradient):
        """The model output with its raw eps replaced by eps - sqrt(1 - alpha_bar_t) * gradient."""
        mean_output, variance_output = self.denoiser.split(output, x)
        alpha_bar = gather(self.schedule.alphas_cumprod, t, x.shape)
        guided_eps = self.denoiser.eps(mean_output, x, t) - (1 - alpha_bar).sqrt() * gradient
        mean_output = self.denoiser.from_eps(guided_eps, x, t)
        return mean_output if variance_output is None else th.cat([mean_output, variance_output], dim=1)

    def _forward(self, x, t):
        """The model output at (x, t), and the unconditional branch's (or None) from the same forward."""
        model_t = self.denoiser.model_timesteps(t)
        if self.null_class is None:
            return self.model(x, model_t, **self.model_kwargs), None
        y = self.model_kwargs.get("y")
        if y is None:
            raise ValueError("classifier-free guidance needs class labels: pass model_kwargs['y']")
        doubled = {k: th.cat([v, v]) if th.is_tensor(v) else v for k, v in self.model_kwargs.items()}
        doubled["y"] = th.cat([y, th.full_like(y, self.null_class)])
        both = self.model(th.cat([x, x]), th.cat([model_t, model_t]), **doubled)
        return both.chunk(2)

    def _gradient(self, guides, x, t, output, uncond_output, prediction):
        """The sum of the guides' gradients at x_t."""
        unguided = {
            "eps": self._eps(output, x, t),
            "pred_xstart": prediction["pred_xstart"],
            "alpha_bar": gather(self.schedule.alphas_cumprod, t, (x.shape[0],) + (1,) * (x.dim() - 1)),
        }
        if uncond_output is not None:
            unguided["eps_uncond"] = self._eps(uncond_output, x, t)
        model_t = self.denoiser.model_timesteps(t)
        return functools.reduce(operator.add, [g(x, model_t, unguided, **self.model_kwargs) for g in guides])

    def _eps(self, output, x, t):
        return self.denoiser.eps(self.denoiser.split(output, x)[0], x, t)
