"""Synthetic biomedical factoid QA in the SQuAD JSON layout (BioASQ as BioBERT distributed it): the offline
default of t5_qa's bioqa data set. Passages about invented genes, drugs and diseases, one question per stated fact.
"""
from __future__ import annotations

import random
import re

_GENE_A = "BRX KLT MAP ZNF SOX CDK TRP NRG FOX PAX LRR WNT".split()
_DRUG_A = "vero tala cili poma dena rita lumi sapo fexo quila".split()
_DRUG_B = "tinib mab zumab ciclib parib rafenib".split()
_DISEASE_A = "Harlow Menzies Okafor Pellard Quist Ravensky Tamura Ulloa Verhoeven Wexley".split()
_DISEASE_B = "syndrome disease dystrophy anemia ataxia".split()
_TISSUES = "liver kidney retina heart muscle pancreas lung skin cerebellum bone marrow".split()
_FACTS = [  # (sentence, question, slot the question asks for)
    ("{gene} is located on chromosome {chrom}.", "On which chromosome is {gene} located?", "chrom"),
    ("Mutations in {gene} cause {disease}.", "Mutations in which gene cause {disease}?", "gene"),
    ("{disease} is treated with {drug}.", "Which drug is used to treat {disease}?", "drug"),
    ("{drug} inhibits the kinase encoded by {gene}.", "Which gene encodes the kinase inhibited by {drug}?", "gene"),
    ("{gene} is mainly expressed in the {tissue}.", "In which tissue is {gene} mainly expressed?", "tissue"),
    ("{disease} affects about {prevalence} people in {count} births.",
     "How many people in {count} births are affected by {disease}?", "prevalence"),
]
_FILLER = ["The study enrolled patients from several centres.", "Expression was measured by quantitative PCR.",
           "Results were confirmed in an independent cohort.", "The protein forms a complex with two partners."]


def _bio_values(rng: random.Random) -> dict[str, str]:
    return {"gene": f"{rng.choice(_GENE_A)}{rng.randint(1, 40)}",
            "drug": rng.choice(_DRUG_A) + rng.choice(_DRUG_B),
            "disease": f"{rng.choice(_DISEASE_A)} {rng.choice(_DISEASE_B)}",
            "chrom": str(rng.randint(1, 22)), "tissue": rng.choice(_TISSUES),
            "prevalence": str(rng.randint(1, 9)), "count": rng.choice(["1,000", "10,000", "100,000"])}


def _passage(rng: random.Random, pid: str) -> dict:
    values = _bio_values(rng)
    facts = rng.sample(_FACTS, rng.randint(2, 4))
    sentences = [sentence for sentence, _, _ in facts] + rng.sample(_FILLER, 1)
    rng.shuffle(sentences)
    context, starts = "", {}
    for sentence in sentences:
        for slot in re.findall(r"\{(\w+)\}", sentence):  # where the slot's value lands in the context
            starts.setdefault(slot, len(context) + len(sentence[: sentence.index("{" + slot + "}")].format(**values)))
        context += sentence.format(**values) + " "
    qas = [{"id": f"{pid}-{n}", "question": question.format(**values),
            "answers": [{"text": values[slot], "answer_start": starts[slot]}]}
           for n, (_, question, slot) in enumerate(facts)]
    return {"context": context.strip(), "qas": qas}


def generate_bioqa(num_passages: int, seed: int = 0) -> dict:
    """Factoid passages with questions in the SQuAD JSON format (flatten with labkit.data.squad.flatten_squad)."""
    data = [{"title": f"synthetic-bio-{seed}-{i}", "paragraphs": [_passage(random.Random(f"labkit-bioqa-{seed}-{i}"),
                                                                             f"bio{seed}-{i}")]}
            for i in range(num_passages)]
    return {"version": "synthetic-bioasq-factoid", "data": data}
