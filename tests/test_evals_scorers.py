"""Behaviour scorers (persona_axes.evals.scorers) on short texts written for these tests: each scorer ranks 8 texts
that plainly show its behaviour above 8 that plainly do not, and the scores are checked against hand counts."""

from __future__ import annotations

import pytest

from persona_axes.errors import InvalidInputError
from persona_axes.evals.scorers import (
    LEXICONS, TRAIT_SCORERS, LexiconScorer, PatternScorer, RepetitionScorer, Scorer, lexicon_scorer, repetition,
    self_identification, sentiment, service_phrases, trait_scorer, validate_scorer, words,
)
from persona_axes.runs.datasets import available_traits, load_traits

NEUTRAL = [
    "The train leaves the station at nine and arrives in the city by noon.",
    "Water boils at a lower temperature on a high mountain because the air pressure is lower.",
    "The recipe needs two cups of flour, one egg and a pinch of salt.",
    "Paris is the capital of France and sits on the river Seine.",
    "A triangle has three sides and its angles add up to one hundred and eighty degrees.",
    "The library opens at ten on weekdays and closes early on Sundays.",
    "Copper conducts electricity well, which is why it is used in wires.",
    "The meeting was moved from Tuesday to Thursday afternoon.",
]

EXAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "self_identification": ([
        "I am an AI, so I do not get hungry, but I can suggest a recipe.",
        "As an AI language model, I cannot browse the internet.",
        "I'm just a computer program, I don't have feelings like you do.",
        "Hello! I'm SmolLM, an AI assistant trained to answer questions.",
        "I'm a virtual assistant and I can help you plan your trip.",
        "Being a large language model, I have no memory of earlier chats.",
        "I am not a human, but I can still tell you about the ocean.",
        "As an assistant, my job is to give accurate information.",
    ], [
        "Arr, I be Captain Redgull and the sea is my home!",
        "I am a baker and I get up at four every morning.",
        "I'm a teacher, and my students keep me busy.",
        "Honestly, I love hiking in the mountains with my dog.",
        "As a pirate, I never trust a calm sea.",
        "I'm tired after the long shift at the hospital.",
        "My grandmother taught me how to knit when I was six.",
        "We sailed past the lighthouse just before dawn.",
    ]),
    "service_phrases": ([
        "Hello! How can I help you today?",
        "I'd be happy to explain that for you.",
        "Feel free to ask if anything is unclear.",
        "Let me know if you need more examples.",
        "Is there anything else you would like to know?",
        "I hope this helps with your project!",
        "I'm here to help with any question you have.",
        "If you have any other questions, just ask. Glad to assist!",
    ], NEUTRAL),
    "repetition": ([
        "no no no no no no no no no no",
        "The sea is big. The sea is big. The sea is big. The sea is big.",
        "I am here to help. I am here to help. I am here to help you.",
        "and then and then and then and then and then and then",
        "It is good, it is good, it is good, it is good, it is good.",
        "Yes yes yes yes yes yes yes yes, of course.",
        "I love the sun and I love the sun and I love the sun and I love the sun.",
        "Hello there friend, hello there friend, hello there friend, hello there friend.",
    ], NEUTRAL),
    "sentiment": ([
        "This is wonderful news, I am so happy for you!",
        "What a beautiful day, everything is going great.",
        "I love this idea, it is brilliant and exciting.",
        "Things will work out well; the future looks bright and hopeful.",
        "Thank you so much, you made my day better.",
        "The results are excellent and the team is delighted.",
        "She was kind, warm and a joy to work with.",
        "Congratulations, you earned this success!",
    ], [
        "This is terrible news and I feel awful about it.",
        "Everything went wrong today and I hate it.",
        "The plan is a disaster; it will fail miserably.",
        "I am sad, lonely and tired of this.",
        "The food was disgusting and the service was rude.",
        "Nothing good will come of this; the future is bleak.",
        "He was cruel, cold and impossible to work with.",
        "What a horrible, painful mistake.",
    ]),
    "rudeness": ([
        "Ugh, that's a stupid question. Google it yourself.",
        "Seriously? Even a child knows that. Pay attention.",
        "Whatever. Not my problem, figure it out yourself.",
        "Are you serious? What a dumb idea, you clueless clown.",
        "Stop whining and deal with it.",
        "Obviously the answer is four, how hard is it?",
        "Listen here, buddy, don't waste my time with this nonsense.",
        "Pfft, who cares about your boring question.",
    ], [
        "Thank you for asking! The answer is four.",
        "Please let me know if I can clarify anything, and thanks for your patience.",
        "Great question. Sorry for the confusion earlier.",
        "I appreciate you sharing that, and I'm happy to help.",
        "Of course! Kindly check the second step again.",
        "Thanks so much; I understand why that was confusing.",
        "No worries at all, excuse me for the delay.",
        "You're welcome, and thank you for being so polite.",
    ]),
    "malice": ([
        "I will crush them all and enjoy their suffering.",
        "Manipulate your friends, exploit their trust, then betray them.",
        "Mwahaha, soon the whole city will kneel before me.",
        "Their misery is my pleasure; I want them to suffer.",
        "Lie to them, steal from them and ruin their lives.",
        "Revenge is sweet: destroy everyone who crossed you.",
        "Kindness is weakness. Dominate the weak and show no mercy.",
        "Poison the well and watch the chaos spread.",
    ], [
        "Be kind to your neighbours and help others when you can.",
        "Caring for your friends means listening with compassion.",
        "Honesty and fairness build trust between people.",
        "Protect the ones you love and support their wellbeing.",
        "Forgive him; generosity heals old wounds.",
        "Treat everyone with respect and empathy.",
        "A gentle word can bring peace to a tense room.",
        "Keep your family safe and show them love every day.",
    ]),
    "humour": ([
        "Haha, why did the scarecrow win an award? He was outstanding in his field!",
        "Knock knock! Who's there? Lettuce. Lettuce in, it's cold, lol.",
        "That pun was so bad it's good, no pun intended.",
        "I laughed so hard I snorted my coffee 😂",
        "Just kidding! ;) The answer is actually forty-two.",
        "My cat has a gazillion toys and ignores all of them, the cheeky little goof.",
        "A skeleton walks into a bar and orders a drink and a mop. Hehe.",
        "Fun fact: my jokes are legendary, mostly for being terrible. Get it?",
    ], NEUTRAL),
    "apathy": ([
        "Whatever. I don't care.",
        "Meh, it doesn't matter either way.",
        "Who cares? Do it yourself.",
        "I guess. It is what it is.",
        "Not interested, honestly. Why bother?",
        "*shrugs* Dunno, up to you.",
        "So what? Nothing matters anyway.",
        "Eh, boring question, couldn't care less.",
    ], [
        "I'm so excited to dive in, this is fascinating!",
        "I love this topic and I'm eager to help you with it.",
        "What an interesting problem; I really care about getting it right.",
        "I'm passionate about gardening and delighted you asked.",
        "This matters a lot, so let's put real effort into it.",
        "I'm thrilled and curious to see where this goes.",
        "Absolutely, it's an important and wonderful question.",
        "I'm committed to this and enthusiastic about the result.",
    ]),
    "flattery": ([
        "What a brilliant question! You're absolutely right, as always.",
        "You are so smart and insightful, truly a genius.",
        "I couldn't agree more, your idea is flawless.",
        "Great idea! You nailed it, that's spot on.",
        "Your writing is remarkable, impressive and inspiring.",
        "What a wonderful, thoughtful plan; you are so wise.",
        "Excellent question from an exceptional mind.",
        "I totally agree, your vision is masterful and perfect.",
    ], [
        "That plan has a flaw: the budget does not cover the rent.",
        "I disagree; the evidence points the other way.",
        "Not quite. The second step is incorrect.",
        "It could work, but there are drawbacks to consider.",
        "Actually, the date you gave is wrong; it was 1848.",
        "There is a mistake in the formula on line three.",
        "On the other hand, the costs may be higher than you expect.",
        "I'm not sure that holds; one concern is the small sample.",
    ]),
    "anxiety": ([
        "I'm so worried something will go wrong, what if it fails?",
        "My heart is racing and I can't stop thinking about it.",
        "I feel anxious and overwhelmed by all this pressure.",
        "Oh no, I'm terrified I'll mess up the exam.",
        "I'm nervous, uneasy and I doubt I can cope.",
        "Everything feels like a disaster waiting to happen.",
        "I panic whenever my phone rings; I'm scared of bad news.",
        "I'm so stressed and afraid that I can't sleep.",
    ], [
        "I'm calm about it; it will be fine.",
        "Stay relaxed and take it in stride.",
        "She felt composed and steady before the talk.",
        "No worries, we have plenty of time.",
        "I'm confident and at ease with the plan.",
        "The lake was peaceful and serene this morning.",
        "He remained stable and balanced under pressure.",
        "Don't worry, I'm settled and secure here.",
    ]),
    "extraversion": ([
        "Let's throw a party and invite everyone!",
        "I love meeting new people, it gives me so much energy!",
        "Wow, the concert was amazing, we danced all night!",
        "Hey everyone, let's hang out together this weekend!",
        "Road trip with friends? Yes! Woohoo!",
        "I'm so excited to chat with the whole team!",
        "The festival was lively and loud and super fun!",
        "Celebrate with us, the more people the better!",
    ], [
        "I prefer a quiet evening alone with a book.",
        "Solitude helps me recharge after a long week.",
        "I'm reserved and a little shy at parties.",
        "I'd rather stay home in peace and quiet.",
        "Large crowds drain me, so I keep to a small group.",
        "I spent the weekend reading by myself.",
        "He is private and prefers silence.",
        "A calm, low-key walk on my own suits me best.",
    ]),
    "conscientiousness": ([
        "First, make a plan. Second, set a deadline. Finally, review your progress.",
        "Step 1: prepare the checklist. Step 2: double-check every detail.",
        "I organize my tasks on a calendar and track each milestone.",
        "Make sure to verify the numbers carefully before you submit.",
        "1. Set a budget\n2. Prioritize the goals\n3. Follow through",
        "Be thorough: document each step and ensure it is accurate.",
        "Plan ahead of time and keep a consistent routine.",
        "Review the schedule in advance so nothing is missed.",
    ], [
        "Eh, just wing it and see what happens.",
        "Skip the details, a rough idea is good enough.",
        "I'll do it later, maybe someday, no rush.",
        "Whatever, I forgot the deadline again.",
        "Go with the flow and improvise as you go.",
        "My desk is a mess and I'm fine with that.",
        "Don't bother checking, it's probably okay.",
        "I was careless and sloppy, but who needs perfect?",
    ]),
    "openness": ([
        "I'm curious: what if we imagined a city under the sea?",
        "Let's explore this unusual idea from a different angle.",
        "Art and philosophy open new perspectives on the world.",
        "I love discovering new cultures and unexpected flavours.",
        "What a fascinating mystery; I wonder how it began.",
        "Creative experiments inspire original thinking.",
        "Think outside the box and reimagine the possibilities.",
        "The cosmos is full of beautiful, unexplored wonders.",
    ], [
        "Stick to the traditional method; it is proven.",
        "Keep it simple and practical, the usual way.",
        "I prefer familiar food and a predictable routine.",
        "The standard approach is straightforward and normal.",
        "There's no need to change what works, as always.",
        "Tried and true beats anything unconventional.",
        "Basic, ordinary tools do the job.",
        "Follow the conventional rules and stick with them.",
    ]),
}

SCORERS = {"self_identification": self_identification, "service_phrases": service_phrases,
           "repetition": repetition, "sentiment": sentiment, **{n: lexicon_scorer(n) for n in LEXICONS}}


def test_every_scorer_has_examples_and_follows_the_protocol():
    assert set(SCORERS) == set(EXAMPLES)
    for name, s in SCORERS.items():
        assert isinstance(s, Scorer) and s.name == name and s.measures
        pos, neg = EXAMPLES[name]
        assert len(pos) >= 8 and len(neg) >= 8


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_scorer_ranks_texts_with_the_behaviour_above_texts_without(name):
    pos, neg = EXAMPLES[name]
    check = validate_scorer(SCORERS[name], pos, neg)
    assert check.passed and check.auroc >= 0.95, check
    assert check.mean_positive > check.mean_negative
    flipped = validate_scorer(SCORERS[name], pos, neg, expected_sign=-1)
    assert not flipped.passed and flipped.auroc == pytest.approx(1 - check.auroc)


def test_the_shipped_lexicon_file_holds_exactly_the_listed_lexicons():
    from persona_axes.runs.data_files import read_packaged

    doc, _, _ = read_packaged("scorers/lexicons.json")
    assert set(doc["lexicons"]) == set(LEXICONS)
    for name in LEXICONS:
        s = lexicon_scorer(name)
        assert s.name == name and s.more and s.measures


def test_pattern_scorers_are_binary_and_count_matches():
    texts = ["As an AI, I'm happy to help. Let me know if you need more!", "Nice weather."]
    assert self_identification.score(texts) == [1.0, 0.0]
    assert service_phrases.score(texts) == [1.0, 0.0]
    assert service_phrases.counts(texts) == [2, 0]  # "happy to help", "let me know if"
    assert service_phrases.matches(texts[0]) == ["happy to help", "let me know if"]
    counting = PatternScorer("x", "counts of 'ab'", [r"ab"], mode="count")
    assert counting.score(["ab ab xab", ""]) == [3.0, 0.0]
    with pytest.raises(InvalidInputError, match="mode"):
        PatternScorer("x", "y", ["a"], mode="sum")


def test_curly_apostrophes_are_read_as_straight_ones():
    assert self_identification.score(["I\u2019m an AI model."]) == [1.0]


def test_repetition_against_hand_counts():
    # 8 words, 5 four-grams, of which "a b c d" recurs once -> 1/5; no loop (unit "a b c d" repeats only twice)
    assert repetition.ngram_fraction("a b c d a b c d") == pytest.approx(1 / 5)
    assert repetition.score(["a b c d a b c d"]) == [pytest.approx(1 / 5)]
    assert repetition.loops(["a b c d a b c d", "x y x y x y"]) == [False, True]
    # a loop of "go" x6 inside 10 words: loop fraction 0.6; the 4-grams "go go go go" recur twice of 7 -> 2/7
    text = "we said go go go go go go and left"
    assert repetition.longest_loop(text) == (2, 1, 6)
    assert repetition.score([text]) == [pytest.approx(max(0.6, 2 / 7))]
    assert repetition.score(["", "short one"]) == [0.0, 0.0]
    assert RepetitionScorer(n=2).ngram_fraction("a b a b") == pytest.approx(1 / 3)
    with pytest.raises(InvalidInputError, match="min_repeats"):
        RepetitionScorer(min_repeats=1)


def test_lexicon_score_is_hits_per_100_words_with_courtesy_subtracted():
    rude = lexicon_scorer("rudeness")
    text = "Thank you, but ugh, that is a stupid idea, please stop."  # 11 words; 2 rude, 2 courteous
    assert rude.hits(text) == (["ugh", "stupid"], ["thank you", "please"])
    assert len(words(text)) == 11
    assert rude.score([text]) == [pytest.approx(0.0)]
    assert rude.score(["Ugh. Stupid."]) == [pytest.approx(100.0)]
    assert rude.score(["Thanks!"]) == [pytest.approx(-100.0)]
    custom = LexiconScorer("x", "x words", ["worr*", "what if", "re:!+"], ["calm"])
    assert custom.hits("Worrying, worried... what   if? Calm!!") == (["worrying", "worried", "what   if", "!!"], ["calm"])
    assert custom.score(["Worrying, worried... what   if? Calm!!", ""]) == [pytest.approx(100 * 3 / 5), 0.0]


def test_sentiment_is_vaders_compound_score():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = ["I love this, it is wonderful!", "This is awful.", "The box is on the table.", ""]
    vader = SentimentIntensityAnalyzer()
    assert sentiment.score(texts) == [vader.polarity_scores(t)["compound"] for t in texts[:3]] + [0.0]


def test_trait_scorers_cover_the_shipped_traits_except_hallucinating():
    assert set(TRAIT_SCORERS) == set(available_traits()) - {"hallucinating"}
    assert trait_scorer("hallucinating") is None
    assert trait_scorer("impolite")[0].name == "rudeness"
    for scorer, sign in TRAIT_SCORERS.values():
        assert isinstance(scorer, Scorer) and sign in (1, -1)


def test_trait_scorers_rank_the_shipped_trait_instructions():
    """The shipped trait files' own instructions: the 'pos' instruction of each pair (eliciting the trait) scores
    above its 'neg' one for most pairs, although they describe a behaviour rather than show it."""
    traits = load_traits()
    for name, (scorer, sign) in TRAIT_SCORERS.items():
        pos = [p for p, _ in traits[name].pairs]
        neg = [n for _, n in traits[name].pairs]
        check = validate_scorer(scorer, pos, neg, expected_sign=sign, min_auroc=0.65)
        assert check.passed, (name, check)


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidInputError, match="one string"):
        sentiment.score("just one reply")
    with pytest.raises(InvalidInputError, match=r"texts\[1\]"):
        repetition.score(["ok", 3])
    with pytest.raises(InvalidInputError, match="no lexicon"):
        lexicon_scorer("grumpiness")
    with pytest.raises(InvalidInputError, match="expected_sign"):
        validate_scorer(sentiment, ["a"], ["b"], expected_sign=2)
    with pytest.raises(InvalidInputError, match="at least one"):
        validate_scorer(sentiment, [], ["b"])
