"""Synthetic CORD-19 abstract/title pairs in the original SimCLS lab's CSV layout (``abstract``, ``title``):
the offline default of the simcls task.

Each pair is one invented study: a disease, an intervention or exposure, a population, a design, an outcome
and a finding. The abstract states them over four or five sentences in a structured-abstract style
(background, methods, results, conclusions) with numbers and filler; the title names the same facts in
one of several title patterns, so a title is a summary of its abstract that shares words with it, as on
CORD-19, and candidates that keep the right facts score a higher ROUGE than those that do not.
"""
from __future__ import annotations

import random

_DISEASES = ["COVID-19", "SARS-CoV-2 infection", "MERS-CoV infection", "influenza A", "acute respiratory distress syndrome",
             "viral pneumonia", "long COVID", "respiratory syncytial virus infection", "severe COVID-19",
             "post-acute sequelae of SARS-CoV-2"]
_INTERVENTIONS = ["remdesivir", "dexamethasone", "tocilizumab", "convalescent plasma", "hydroxychloroquine",
                  "prone positioning", "mRNA vaccination", "high-flow nasal oxygen", "favipiravir", "ivermectin",
                  "anticoagulation", "face mask use", "school closures", "telemedicine follow-up"]
_POPULATIONS = ["hospitalised adults", "children", "pregnant women", "health care workers", "older adults",
                "intensive care patients", "nursing home residents", "patients with diabetes", "kidney transplant recipients",
                "outpatients"]
_DESIGNS = ["a randomised controlled trial", "a retrospective cohort study", "a prospective cohort study",
            "a systematic review and meta-analysis", "a case-control study", "a cross-sectional survey",
            "a multicentre observational study"]
_OUTCOMES = ["mortality", "time to recovery", "viral clearance", "hospital admission", "mechanical ventilation",
             "length of stay", "seroconversion", "transmission", "thrombotic events", "symptom duration"]
_PLACES = ["Wuhan", "Lombardy", "New York City", "Madrid", "Seoul", "Sao Paulo", "London", "Tehran", "Toronto", "Singapore"]
_EFFECTS = [("reduced", "reduces"), ("did not change", "does not change"), ("increased", "increases"),
            ("was associated with lower", "lowers"), ("was not associated with", "has no effect on")]
_FILLER = ["The pandemic has placed unprecedented pressure on health systems worldwide.",
           "Evidence to guide clinical practice remains limited.",
           "Data were collected from electronic health records.",
           "Sensitivity analyses gave consistent results.",
           "Further studies with longer follow-up are needed.",
           "These findings may inform public health policy."]
_TITLES = ["{Intervention} and {outcome} in {population} with {disease}: {design}",
           "Effect of {intervention} on {outcome} among {population} with {disease}",
           "{Intervention} {effect_now} {outcome} in {disease}: {design} in {place}",
           "{Outcome} after {intervention} in {population} with {disease}",
           "Does {intervention} reduce {outcome} in {disease}? Evidence from {place}"]


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _pair(rng: random.Random) -> dict[str, str]:
    disease, intervention, population = rng.choice(_DISEASES), rng.choice(_INTERVENTIONS), rng.choice(_POPULATIONS)
    design, outcome, place = rng.choice(_DESIGNS), rng.choice(_OUTCOMES), rng.choice(_PLACES)
    effect_past, effect_now = rng.choice(_EFFECTS)
    n, ratio = rng.randint(40, 12000), rng.uniform(0.4, 1.6)
    low, high = ratio * rng.uniform(0.6, 0.95), ratio * rng.uniform(1.05, 1.5)
    sentences = [
        f"Background: the role of {intervention} in {population} with {disease} is unclear.",
        rng.choice(_FILLER),
        f"Methods: we conducted {design} of {n} {population} in {place} and measured {outcome}.",
        f"Results: {intervention} {effect_past} {outcome} (hazard ratio {ratio:.2f}, 95% CI {low:.2f} to {high:.2f}).",
        f"Conclusions: in {population} with {disease}, {intervention} {effect_now} {outcome}.",
    ]
    if rng.random() < 0.5:
        sentences.insert(4, rng.choice(_FILLER))
    slots = dict(intervention=intervention, Intervention=_cap(intervention), outcome=outcome, Outcome=_cap(outcome),
                 population=population, disease=disease, design=design, place=place, effect_now=effect_now)
    return {"abstract": " ".join(sentences), "title": rng.choice(_TITLES).format(**slots)}


def generate_cord19(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {"abstract", "title"}; row i depends only on (seed, i), so a longer set extends a shorter one."""
    return [_pair(random.Random(f"cord19-{seed}-{i}")) for i in range(n)]
