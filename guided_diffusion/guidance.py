"""Guidance: steering a sampler toward a condition c by a scaled gradient of log p(c | x_t).

The guide API (see docs/guidance.md): a guide is a callable

    guide(x, t, prediction, **model_kwargs) -> gradient [N, C, H, W]

x: x_t [N, C, H, W]; t: [N], the timesteps the model sees (original indices, scaled with
--rescale_timesteps); prediction: the model's prediction before this guide (unguided, except that
guides without on_model_output see it after the on_model_output guides' shift), a mapping of tensors
shaped like x: "eps" (noise), "pred_xstart" (x_0, clipped when clip_denoised), "alpha_bar" (alpha_bar_t,
[N, 1, ...]) and, when a guide declares unconditional, "eps_uncond"; model_kwargs: the model's keyword
arguments (e.g. y). It returns scale * grad_{x_t} log p(c | x_t).

Where the gradient enters is the release's: DDPM adds variance * gradient to the mean
(`GaussianDiffusion.condition_mean`); the other samplers replace eps by eps - sqrt(1 - alpha_bar_t) *
gradient (`condition_score`), eps read from the clipped x_0. A guide's class attributes change that:

- on_model_output = True: it shifts the model's raw noise prediction, before x_0 is derived and
  clipped, under every sampler (classifier-free guidance); its prediction's "pred_xstart" is unclipped.
- through_model = True: its prediction's "pred_xstart" is x0_hat(x_t) with a gradient path to x (x
  requires grad and the model ran under enable_grad for that step), so the guide can differentiate a
  loss on the clean image through the network (DPS, FreeDoM, Universal Guidance). Plain sampling and
  other guides run without gradients.
- after_step = True: its output is added as it is to the sampler's x_{t-1} (DPS's correction
  x_{t-1} = x'_{t-1} - zeta grad ||y - A(x0_hat)||) instead of entering the mean or the score.
- unconditional = {model keyword: one row}: the model also runs the unconditional branch, those keywords
  replaced by the rows (e.g. {"y": the null class}, or the empty caption's {"tokens", "mask"}), in the
  same batched forward, and "eps_uncond" is in the guides' prediction. null_class = a label is the
  release-era shorthand for unconditional = {"y": label}.
- model_inputs = {model keyword: value}: it shifts nothing and is not called; the model gets these
  keywords (GuidanceScaleInput: W for a model that takes it as an input).

A plain function is a guide too (all attributes off).
"""

import contextlib
import copy
import functools
import operator

import torch as th
import torch.nn.functional as F

from .schedules import gather


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021): scale * grad log softmax(classifier(x_t, t))[y].

    classifier(x [N, C, H, W], t [N]) -> logits [N, K]; the target y comes from model_kwargs["y"].
    """

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

    The unconditional branch is the model with its condition dropped: a class-conditional model trained
    with --class_dropout_prob > 0 sees its label null_class, a text model the empty caption
    (unconditional = {"tokens": [L], "mask": [L] all False}, one row each). The sampler then runs [x; x]
    with [condition; unconditional] in one batched forward; the gradient of the implicit classifier,
    (scale - 1) (eps_u - eps_c) / sqrt(1 - alpha_bar_t), shifts the model's raw eps (on_model_output),
    before x_0 is derived and clipped. scale = 1 is plain conditional sampling; learned variances come
    from the conditional branch. scale: a number, or a tensor [N] with each example's own.
    """

    on_model_output = True

    def __init__(self, scale, null_class=None, unconditional=None):
        if (null_class is None) == (unconditional is None):
            raise ValueError(
                "classifier-free guidance needs the unconditional branch: a model with a null class (train it "
                "with --class_dropout_prob > 0 and pass model.null_class), or unconditional={keyword: row} "
                "such as a text model's empty caption"
            )
        self.scale = scale
        self.null_class = null_class
        self.unconditional = {"y": th.tensor(null_class)} if unconditional is None else dict(unconditional)

    def __call__(self, x, t, prediction, **model_kwargs):
        scale = self.scale.view(-1, *[1] * (x.dim() - 1)) if th.is_tensor(self.scale) else self.scale
        difference = prediction["eps_uncond"] - prediction["eps"]
        return (scale - 1) * difference / (1 - prediction["alpha_bar"]).sqrt()


class GuidanceScaleInput:
    """Guidance at W for a model that takes W as an input (a consistency student distilled with
    --guidance_scale_max): the model sees guidance_scale = W, one evaluation per step, nothing shifted."""

    def __init__(self, scale):
        self.model_inputs = {"guidance_scale": scale}


class CondFnGuidance:
    """The release's cond_fn(x, t, **model_kwargs) -> scaled gradient, as a guide."""

    def __init__(self, cond_fn):
        self.cond_fn = cond_fn

    def __call__(self, x, t, prediction, **model_kwargs):
        return self.cond_fn(x, t, **model_kwargs)


class CleanImageGuidance:
    """Guidance by any differentiable loss of the clean image (FreeDoM, Universal Guidance; the paper's
    "semantic guidance" with any model): x_{t-1} = x'_{t-1} - scale * grad_{x_t} loss(x0_hat(x_t)).

    loss(x0 [N, C, H, W], **model_kwargs) -> [N], one value per sample (lower is better), e.g.
    `clean_classifier_loss(classifier)`. The gradient is taken through the network (through_model).
    """

    through_model = True
    after_step = True

    def __init__(self, loss, scale):
        self.loss = loss
        self.scale = scale

    def __call__(self, x, t, prediction, **model_kwargs):
        values = self.loss(prediction["pred_xstart"], **model_kwargs)
        if values.shape != (x.shape[0],):
            raise ValueError(
                f"a guidance loss must return one value per sample, shape ({x.shape[0]},), got {tuple(values.shape)}: "
                "reduce over every dimension but the batch (e.g. .flatten(1).sum(1))"
            )
        return -self.scale * th.autograd.grad(values.sum(), x, retain_graph=True)[0]


class MeasurementGuidance(CleanImageGuidance):
    """DPS (Chung et al. 2023) for a measurement y = A(x_0) + n: x_{t-1} = x'_{t-1} - zeta *
    grad_{x_t} ||y - A(x0_hat(x_t))||_2 per sample (the norm itself, not its square, as the authors' code).

    forward: A, a callable x [N, C, H, W] -> y (e.g. an editing/operators.py operator's `A`); measurement: y.
    """

    def __init__(self, forward, measurement, zeta):
        super().__init__(self._residual_norm, zeta)
        self.forward = forward
        self.measurement = measurement

    def _residual_norm(self, x0, **model_kwargs):
        return (self.measurement - self.forward(x0)).flatten(1).norm(dim=1)


def clean_classifier_loss(classifier):
    """loss(x0, y) = -log softmax(classifier(x0))[y] for a classifier of clean images: logits [N, K]."""

    def loss(x0, y=None, **model_kwargs):
        if y is None:
            raise ValueError("guidance by a clean classifier needs target labels: pass model_kwargs['y']")
        log_probs = F.log_softmax(classifier(x0).float(), dim=-1)
        return -log_probs[th.arange(len(y)), y.view(-1)]

    return loss


def as_guides(guidance=(), cond_fn=None):
    """A tuple of guides from None, a guide, a sequence of guides and/or a release-style cond_fn."""
    guides = () if guidance is None else (guidance,) if callable(guidance) else tuple(guidance)
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


class GuideInputs(dict):
    """The prediction a guide reads; a missing "eps_uncond" says what a guide must declare to get it."""

    def __missing__(self, key):
        if key == "eps_uncond":
            raise KeyError(
                "prediction['eps_uncond'] exists only when a guide declares null_class (the label of the "
                "unconditional branch, e.g. model.null_class) or unconditional (its model keywords, e.g. a text "
                "model's empty caption {'tokens', 'mask'}): set one on your guide"
            )
        raise KeyError(f"{key!r}: a guide's prediction holds {', '.join(self)}")


class GuidedDenoiser:
    """denoise(x, t) -> {"mean", "variance", "log_variance", "pred_xstart"[, "sample_shift"]}: a model
    bound to a diffusion, with guides applied. What samplers call.

    diffusion: a GaussianDiffusion (its p_mean_variance, condition_mean and condition_score are used,
    so a subclass's overrides take effect); guides: guide callables (above); on: "mean" (DDPM) or
    "score" (the other samplers), where guides without on_model_output / after_step act;
    reclip_guided: clip x_0 again (denoised_fn, then clip_denoised) after a score guide's shift.
    model_kwargs, with the guides' model_inputs, go to the model and to every guide. "sample_shift", when
    after_step guides exist, is what the sampler adds to its x_{t-1}.

    denoise.predict(x, t) and denoise.guide(*...) are the two halves of a call, so that a sampler can
    draw random numbers between them (DDPM draws its noise before the guides, as the release does).
    """

    def __init__(self, diffusion, model, guides=(), *, on="score", clip_denoised=True, denoised_fn=None,
                 model_kwargs=None, reclip_guided=False):
        if on not in ("mean", "score"):
            raise ValueError(f"guidance acts on the 'mean' or the 'score', got {on!r}")
        self.diffusion = diffusion
        self.schedule = diffusion.schedule
        self.denoiser = diffusion.denoiser
        self.model = model
        self.clip_denoised = clip_denoised
        self.denoised_fn = denoised_fn
        inputs = [guide for guide in guides if _declares(guide, "model_inputs")]
        self.model_kwargs = functools.reduce(lambda kwargs, guide: {**kwargs, **guide.model_inputs}, inputs,
                                             model_kwargs or {})
        self.reclip_guided = reclip_guided
        self.guides = tuple(guide for guide in guides if guide not in inputs)
        for guide in self.guides:
            if _declares(guide, "on_model_output") and _declares(guide, "after_step"):
                raise ValueError(f"{type(guide).__name__} declares both on_model_output and after_step: choose one")
        self.output_guides = [g for g in self.guides if _declares(g, "on_model_output")]
        self.step_guides = [g for g in self.guides if _declares(g, "after_step")]
        others = [g for g in self.guides if g not in self.output_guides + self.step_guides]
        self.score_guides = others if on == "score" else []
        self.mean_guides = others if on == "mean" else []
        self.through_model = any(_declares(g, "through_model") for g in self.guides)
        unconditional = [_unconditional_of(g) for g in self.guides if _unconditional_of(g) is not None]
        if len(unconditional) > 1:
            raise ValueError(f"one classifier-free guide at a time, got {len(unconditional)} unconditional branches")
        self.unconditional = unconditional[0] if unconditional else None

    def over(self, diffusion):
        """This denoiser bound to another diffusion (e.g. the same one over more timesteps)."""
        rebound = copy.copy(self)
        rebound.diffusion, rebound.schedule, rebound.denoiser = diffusion, diffusion.schedule, diffusion.denoiser
        return rebound

    def __call__(self, x, t, after_step=True):
        """The guided prediction at x_t, steps t [N]; after_step=False skips the after_step guides."""
        return self.guide(*self.predict(x, t), after_step=after_step)

    def predict(self, x, t):
        """(p_mean_variance's prediction at x_t with the on_model_output guides applied, what guide() needs)."""
        x_in = x.detach().requires_grad_(True) if self.through_model else x
        seen = {}
        with th.enable_grad() if self.through_model else contextlib.nullcontext():
            prediction = self.diffusion.p_mean_variance(
                functools.partial(self._model_output, t=t, seen=seen), x_in, t, clip_denoised=self.clip_denoised,
                denoised_fn=self.denoised_fn, model_kwargs=self.model_kwargs)
        return prediction, (x_in, t, seen)

    def guide(self, prediction, context, after_step=True):
        """The prediction with the score / mean guides applied, and "sample_shift" from the after_step ones."""
        x, t, seen = context
        if not self.guides:
            return prediction
        with th.enable_grad() if self.through_model else contextlib.nullcontext():
            inputs = self._guide_inputs(seen, x, t, prediction["pred_xstart"])
            if self.score_guides:
                prediction = self.diffusion.condition_score(self._cond_fn(self.score_guides, inputs), prediction, x,
                                                            t, model_kwargs=self.model_kwargs)
                if self.reclip_guided:
                    prediction = self._reclipped(prediction, x, t)
            if self.mean_guides:
                mean = self.diffusion.condition_mean(self._cond_fn(self.mean_guides, inputs), prediction, x, t,
                                                     model_kwargs=self.model_kwargs)
                prediction = dict(prediction, mean=mean)
            if self.step_guides and after_step:
                prediction = dict(prediction, sample_shift=self._total(self.step_guides, x, seen["t"], inputs))
        return {name: value.detach() for name, value in prediction.items()}

    def _model_output(self, x, model_t, t, seen, **model_kwargs):
        """The model's output at (x, model_t) as p_mean_variance reads it: both branches in one forward
        when a guide has a null class, the on_model_output guides' shift of the raw eps applied. Records
        in `seen` what the guides read (nothing without guides)."""
        output, uncond_output = self._forward(x, model_t, model_kwargs)
        if self.output_guides:
            raw = self.denoiser.xstart(self.denoiser.split(output, x)[0], x, t)
            inputs = self._guide_inputs(dict(output=output, uncond_output=uncond_output), x, t, raw)
            output = self._shift_output(output, x, t, self._total(self.output_guides, x, model_t, inputs))
        seen.update(t=model_t, output=output, uncond_output=uncond_output)
        return output

    def _forward(self, x, model_t, model_kwargs):
        """The model output at (x, model_t), and the unconditional branch's (or None) from the same forward."""
        if self.unconditional is None:
            return self.model(x, model_t, **model_kwargs), None
        n = x.shape[0]
        doubled = {k: th.cat([v, v]) if _is_batched(v, n) else v for k, v in model_kwargs.items()}
        for key, row in self.unconditional.items():
            condition = model_kwargs.get(key)
            if condition is None:
                what = "class labels" if key == "y" else f"its condition {key!r}"
                raise ValueError(f"classifier-free guidance needs {what}: pass model_kwargs[{key!r}]")
            row = row.to(device=condition.device, dtype=condition.dtype)
            doubled[key] = th.cat([condition, row.expand(n, *row.shape)])
        both = self.model(th.cat([x, x]), th.cat([model_t, model_t]), **doubled)
        return both.chunk(2)

    def _shift_output(self, output, x, t, gradient):
        """The model output with its raw eps replaced by eps - sqrt(1 - alpha_bar_t) * gradient."""
        mean_output, variance_output = self.denoiser.split(output, x)
        alpha_bar = gather(self.schedule.alphas_cumprod, t, x.shape)
        guided_eps = self.denoiser.eps(mean_output, x, t) - (1 - alpha_bar).sqrt() * gradient
        mean_output = self.denoiser.from_eps(guided_eps, x, t)
        return mean_output if variance_output is None else th.cat([mean_output, variance_output], dim=1)

    def _guide_inputs(self, seen, x, t, pred_xstart):
        """What a guide reads: eps, pred_xstart, alpha_bar [N, 1, ...] and, with a null class, eps_uncond
        (from the model outputs recorded in `seen`)."""
        inputs = GuideInputs(
            eps=self._eps(seen["output"], x, t), pred_xstart=pred_xstart,
            alpha_bar=gather(self.schedule.alphas_cumprod, t, (x.shape[0],) + (1,) * (x.dim() - 1)),
        )
        if seen["uncond_output"] is not None:
            inputs["eps_uncond"] = self._eps(seen["uncond_output"], x, t)
        return inputs

    def _cond_fn(self, guides, inputs):
        """The guides as one release-style cond_fn(x, t, **model_kwargs), for condition_mean / condition_score."""
        return lambda x, model_t, **model_kwargs: self._total(guides, x, model_t, inputs)

    def _total(self, guides, x, model_t, inputs):
        return functools.reduce(operator.add, [g(x, model_t, inputs, **self.model_kwargs) for g in guides])

    def _reclipped(self, prediction, x, t):
        """x_0 finished again (denoised_fn, clip) after a score shift, and the mean recomputed from it."""
        pred_xstart = self.denoiser.finish_xstart(prediction["pred_xstart"], self.clip_denoised, self.denoised_fn)
        return dict(prediction, pred_xstart=pred_xstart, mean=self.schedule.posterior(pred_xstart, x, t)[0])

    def _eps(self, output, x, t):
        return self.denoiser.eps(self.denoiser.split(output, x)[0], x, t)


def _unconditional_of(guide):
    """A guide's unconditional model keywords ({keyword: row}), from `unconditional` or `null_class`, or None."""
    if getattr(guide, "unconditional", None) is not None:
        return guide.unconditional
    if getattr(guide, "null_class", None) is not None:
        return {"y": th.tensor(guide.null_class)}
    return None


def _declares(guide, attribute):
    return bool(getattr(guide, attribute, False))


def _is_batched(value, n):
    """A model keyword that holds one row per sample (doubled for the unconditional branch)."""
    return th.is_tensor(value) and value.dim() > 0 and value.shape[0] == n
