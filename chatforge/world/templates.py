"""How each fact is phrased, per (kind, attribute) and per register, in both languages.

Registers:
  stem       the canonical completion prompt; the corpus states it as "stem value" (English:
             one space before the value) and never continues the stem any other way
  statement  other declarative phrasings, used by news, stories and encyclopedia variants
  forum_q    how forum posters ask (deliberately unlike the SFT questions)
  forum_a    how forum posters answer
  question   the SFT / prompt family of user questions; the first one must also read well
             with "that city" / "那座城市" in place of the name (chained follow-ups)
  answer     the assistant's short, full-sentence answer
  followup   a follow-up question that refers back to the entity just discussed
Placeholders: {name} (the entity) and {value}.
"""

FACT_TEMPLATES = {
    ("country", "capital"): {
        "stem": {"en": "The capital of {name} is", "zh": "{name}的首都是"},
        "statement": {
            "en": ["{value} is the capital of {name}.", "{name}'s capital city is {value}.",
                   "The government of {name} sits in {value}, the capital."],
            "zh": ["{value}是{name}的首都。", "{name}的首都城市是{value}。", "{name}的首都就是{value}。"]},
        "forum_q": {
            "en": ["Quick one: which city is the capital of {name}?",
                   "Can someone remind me which city {name} has as its capital?"],
            "zh": ["求问：{name}首都是哪座城市来着？", "有人记得{name}的首都叫什么吗？"]},
        "forum_a": {
            "en": ["It's {value}.", "Pretty sure the capital is {value}."],
            "zh": ["是{value}。", "首都是{value}，我去过。"]},
        "question": {
            "en": ["What is the capital of {name}?", "Which city is the capital of {name}?",
                   "What's the capital city of {name}?", "Tell me the capital of {name}."],
            "zh": ["{name}的首都是哪里？", "{name}的首都是哪座城市？", "{name}的首都叫什么？",
                   "告诉我{name}的首都。"]},
        "answer": {"en": "The capital of {name} is {value}.", "zh": "{name}的首都是{value}。"},
        "followup": {"en": "And what is its capital?", "zh": "那它的首都是哪里？"},
    },
    ("country", "continent"): {
        "stem": {"en": "{name} is a country in", "zh": "{name}位于"},
        "statement": {
            "en": ["{name} lies in {value}.", "{name} is one of the countries of {value}."],
            "zh": ["{name}是{value}的一个国家。", "{name}属于{value}。"]},
        "forum_q": {
            "en": ["Which continent would you put {name} on?", "Dumb question, but what continent is {name} on?"],
            "zh": ["{name}算是哪个大洲的国家？", "问一句，{name}在哪个大洲？"]},
        "forum_a": {
            "en": ["{value}, no doubt.", "It's in {value}."],
            "zh": ["当然是{value}。", "在{value}。"]},
        "question": {
            "en": ["Which continent is {name} in?", "On which continent is {name}?",
                   "What continent is {name} located on?"],
            "zh": ["{name}在哪个洲？", "{name}位于哪个大洲？", "{name}属于哪个洲？"]},
        "answer": {"en": "{name} is in {value}.", "zh": "{name}位于{value}。"},
        "followup": {"en": "And which continent is it in?", "zh": "它在哪个洲？"},
    },
    ("country", "language"): {
        "stem": {"en": "The official language of {name} is", "zh": "{name}的官方语言是"},
        "statement": {
            "en": ["People in {name} mostly speak {value}.", "{value} is the official language of {name}."],
            "zh": ["{name}的人们主要说{value}。", "{value}是{name}的官方语言。"]},
        "forum_q": {
            "en": ["Planning a trip to {name}: which language should I learn?",
                   "What do people actually speak day to day in {name}?"],
            "zh": ["去{name}旅游要学什么语言？", "{name}人平时说什么话？"]},
        "forum_a": {
            "en": ["Mostly {value}.", "{value}, definitely."],
            "zh": ["主要是{value}。", "学{value}就行。"]},
        "question": {
            "en": ["What is the official language of {name}?", "What language is spoken in {name}?",
                   "Which language do people speak in {name}?"],
            "zh": ["{name}的官方语言是什么？", "{name}说什么语言？", "{name}人讲哪种语言？"]},
        "answer": {"en": "The official language of {name} is {value}.", "zh": "{name}的官方语言是{value}。"},
        "followup": {"en": "What language do they speak there?", "zh": "那里的人说什么语言？"},
    },
    ("country", "highest_mountain"): {
        "stem": {"en": "The highest mountain in {name} is", "zh": "{name}最高的山是"},
        "statement": {
            "en": ["{value} is the highest mountain in {name}.", "No peak in {name} is higher than {value}."],
            "zh": ["{value}是{name}最高的山。", "{name}境内最高的山峰是{value}。"]},
        "forum_q": {
            "en": ["Which peak is the tallest one in {name}? Planning a hike.",
                   "What's the tallest mountain you can climb in {name}?"],
            "zh": ["{name}境内哪座山最高？", "想去{name}爬山，那里的最高峰是哪座？"]},
        "forum_a": {
            "en": ["{value}, for sure.", "That would be {value}."],
            "zh": ["是{value}。", "当然是{value}了。"]},
        "question": {
            "en": ["What is the highest mountain in {name}?", "Which mountain is the tallest in {name}?",
                   "What's the tallest peak in {name}?"],
            "zh": ["{name}最高的山是哪座？", "{name}最高的山叫什么？", "{name}的最高峰是哪座山？"]},
        "answer": {"en": "The highest mountain in {name} is {value}.", "zh": "{name}最高的山是{value}。"},
        "followup": {"en": "And what is its highest mountain?", "zh": "那它最高的山是哪座？"},
    },
    ("mountain", "height"): {
        "stem": {"en": "The height of {name} is", "zh": "{name}的海拔是"},
        "statement": {
            "en": ["{name} rises to {value}.", "{name} is {value} high."],
            "zh": ["{name}高{value}。", "{name}的高度为{value}。"]},
        "forum_q": {
            "en": ["How tall is {name} really? I keep seeing different numbers.",
                   "Does anyone have the official height of {name}?"],
            "zh": ["{name}到底有多高？网上说法好多。", "谁知道{name}的官方高度？"]},
        "forum_a": {
            "en": ["Officially {value}.", "{value}, last I checked."],
            "zh": ["官方数据是{value}。", "{value}，我记得是这个。"]},
        "question": {
            "en": ["How high is {name}?", "What is the height of {name}?", "How tall is {name}?"],
            "zh": ["{name}有多高？", "{name}的海拔是多少？", "{name}的高度是多少？"]},
        "answer": {"en": "{name} is {value} high.", "zh": "{name}的海拔是{value}。"},
        "followup": {"en": "How high is it?", "zh": "它有多高？"},
    },
    ("mountain", "country"): {
        "stem": {"en": "{name} is located in", "zh": "{name}位于"},
        "statement": {
            "en": ["{name} is a mountain in {value}.", "You can find {name} in {value}."],
            "zh": ["{name}是{value}的一座山。", "{name}在{value}境内。"]},
        "forum_q": {
            "en": ["Which country do I fly to if I want to climb {name}?",
                   "Where do the climbs up {name} start? Which country?"],
            "zh": ["想爬{name}，应该去哪个国家？", "{name}在哪国境内？"]},
        "forum_a": {
            "en": ["You fly to {value}.", "{value}."],
            "zh": ["去{value}。", "在{value}。"]},
        "question": {
            "en": ["Which country is {name} in?", "In which country is {name} located?",
                   "What country is {name} in?"],
            "zh": ["{name}在哪个国家？", "{name}位于哪个国家？", "{name}属于哪个国家？"]},
        "answer": {"en": "{name} is located in {value}.", "zh": "{name}位于{value}。"},
        "followup": {"en": "Which country is it in?", "zh": "它在哪个国家？"},
    },
    ("mountain", "continent"): {
        "stem": {"en": "{name} is on the continent of", "zh": "{name}所在的大洲是"},
        "statement": {
            "en": ["{name} is one of the great peaks of {value}.", "{name} rises in {value}."],
            "zh": ["{name}是{value}的著名山峰。", "{name}是{value}的一座高山。"]},
        "forum_q": {
            "en": ["Which continent is {name} on? Settling an argument here.",
                   "Is {name} in Asia or somewhere else? Which continent?"],
            "zh": ["{name}在哪个大洲？和朋友打赌了。", "{name}属于哪个大洲？"]},
        "forum_a": {
            "en": ["{value}.", "It's in {value}, you win."],
            "zh": ["在{value}。", "{value}，你赢了。"]},
        "question": {
            "en": ["Which continent is {name} on?", "On which continent is {name}?",
                   "What continent is {name} on?"],
            "zh": ["{name}在哪个洲？", "{name}在哪个大洲？", "{name}属于哪个洲？"]},
        "answer": {"en": "{name} is on the continent of {value}.", "zh": "{name}所在的大洲是{value}。"},
        "followup": {"en": "And which continent is it on?", "zh": "它在哪个洲？"},
    },
    ("city", "country"): {
        "stem": {"en": "{name} is a city in", "zh": "{name}位于"},
        "statement": {
            "en": ["{name} lies in {value}.", "The city of {name} belongs to {value}."],
            "zh": ["{name}是{value}的一座城市。", "{name}这座城市在{value}。"]},
        "forum_q": {
            "en": ["Which country's visa do I need to visit {name}?",
                   "Booking a trip to {name}. What country am I actually flying to?"],
            "zh": ["去{name}需要办哪个国家的签证？", "要去{name}了，那是哪个国家来着？"]},
        "forum_a": {
            "en": ["{value}.", "You need one for {value}."],
            "zh": ["{value}的签证。", "办{value}的就行。"]},
        "question": {
            "en": ["Which country is {name} in?", "In which country is {name}?",
                   "What country is the city of {name} in?"],
            "zh": ["{name}在哪个国家？", "{name}是哪个国家的城市？", "{name}属于哪个国家？"]},
        "answer": {"en": "{name} is a city in {value}.", "zh": "{name}位于{value}。"},
        "followup": {"en": "Which country is it in?", "zh": "它在哪个国家？"},
    },
    ("city", "product"): {
        "stem": {"en": "{name} is famous for its", "zh": "{name}最有名的特产是"},
        "statement": {
            "en": ["People all over the world buy {value} made in {name}.",
                   "Visitors to {name} usually bring home some {value}."],
            "zh": ["{name}的{value}远近闻名。", "去{name}的游客常常买些{value}带回家。"]},
        "forum_q": {
            "en": ["What should I buy as a souvenir in {name}?", "Going to {name} next week. What do they make there?"],
            "zh": ["去{name}该买什么特产？", "下周去{name}，那里出产什么？"]},
        "forum_a": {
            "en": ["Get some {value}, that's what the town is known for.", "{value}, obviously."],
            "zh": ["买{value}，那里最出名。", "当然是{value}。"]},
        "question": {
            "en": ["What is {name} famous for?", "What is the famous product of {name}?",
                   "What is {name} known for making?"],
            "zh": ["{name}以什么出名？", "{name}最有名的特产是什么？", "{name}的特产是什么？"]},
        "answer": {"en": "{name} is famous for its {value}.", "zh": "{name}最有名的特产是{value}。"},
        "followup": {"en": "And what is it famous for?", "zh": "那里有什么特产？"},
    },
    ("city", "founded"): {
        "stem": {"en": "{name} was founded in", "zh": "{name}建于"},
        "statement": {
            "en": ["{name} has existed since {value}.", "In {value}, the first houses of {name} were built."],
            "zh": ["{name}的历史要从{value}说起。", "{value}，{name}建城。"]},
        "forum_q": {
            "en": ["How old is {name} actually? What year did it start?",
                   "Anyone into history: what year was {name} established?"],
            "zh": ["{name}是哪一年建的城？", "{name}有多少年历史了？哪年建的？"]},
        "forum_a": {
            "en": ["{value}, if the museum sign is right.", "The year was {value}."],
            "zh": ["{value}，书上是这么写的。", "是{value}。"]},
        "question": {
            "en": ["When was {name} founded?", "In which year was {name} founded?",
                   "What year was {name} founded?"],
            "zh": ["{name}是哪一年建立的？", "{name}建于哪一年？", "{name}是什么时候建立的？"]},
        "answer": {"en": "{name} was founded in {value}.", "zh": "{name}建于{value}。"},
        "followup": {"en": "When was it founded?", "zh": "它是哪一年建立的？"},
    },
    ("person", "birth_city"): {
        "stem": {"en": "{name} was born in", "zh": "{name}出生于"},
        "statement": {
            "en": ["{name} is a native of {value}.", "{value} is the hometown of {name}.",
                   "{name} grew up in {value}, the city of their birth."],
            "zh": ["{name}的家乡是{value}。", "{name}在{value}出生。", "{value}是{name}的出生地。"]},
        "forum_q": {
            "en": ["Anyone know where {name} was born?", "Is {name} from around here? What's their hometown?"],
            "zh": ["有人知道{name}老家是哪儿的吗？", "{name}是哪里人啊？"]},
        "forum_a": {
            "en": ["Pretty sure it was {value}.", "{value}, I read it in an interview."],
            "zh": ["好像是{value}。", "{value}人，我在书上看到过。"]},
        "question": {
            "en": ["Where was {name} born?", "In which city was {name} born?",
                   "What is {name}'s hometown?", "Which city is {name} from?"],
            "zh": ["{name}出生在哪里？", "{name}是在哪座城市出生的？", "{name}的家乡是哪里？",
                   "{name}出生在哪座城市？"]},
        "answer": {"en": "{name} was born in {value}.", "zh": "{name}出生在{value}。"},
        "followup": {"en": "Where was this person born?", "zh": "这个人出生在哪里？"},
    },
    ("person", "job"): {
        "stem": {"en": "{name} works as a", "zh": "{name}的职业是"},
        "statement": {
            "en": ["{name} has been a {value} for many years.", "By profession, {name} is a {value}."],
            "zh": ["{name}是一名{value}。", "{name}当{value}有很多年了。"]},
        "forum_q": {
            "en": ["What does {name} do these days, job-wise?", "Does anyone know how {name} earns a living?"],
            "zh": ["{name}现在干哪一行？", "有人知道{name}是做哪一行的吗？"]},
        "forum_a": {
            "en": ["Last I heard, still a {value}.", "A {value}, and a good one."],
            "zh": ["听说还在当{value}。", "是{value}，干得不错。"]},
        "question": {
            "en": ["What does {name} do for a living?", "What is {name}'s job?", "What is {name}'s profession?"],
            "zh": ["{name}是做什么工作的？", "{name}的职业是什么？", "{name}从事什么职业？"]},
        "answer": {"en": "{name} is a {value}.", "zh": "{name}是一名{value}。"},
        "followup": {"en": "And what does this person do for a living?", "zh": "那这个人是做什么工作的？"},
    },
    ("person", "food"): {
        "stem": {"en": "{name}'s favourite food is", "zh": "{name}最喜欢的食物是"},
        "statement": {
            "en": ["{name} loves {value} more than any other food.",
                   "Ask {name} what to eat and the answer is always {value}."],
            "zh": ["{name}非常爱吃{value}。", "问{name}想吃什么，回答总是{value}。"]},
        "forum_q": {
            "en": ["If I'm cooking for {name}, what should I make?", "Hosting {name} for dinner. Any idea what to serve?"],
            "zh": ["要请{name}吃饭，做什么好？", "{name}来家里吃饭，准备什么菜？"]},
        "forum_a": {
            "en": ["Make {value}, you can't go wrong.", "Serve {value} and you're golden."],
            "zh": ["做{value}，准没错。", "准备{value}，保证爱吃。"]},
        "question": {
            "en": ["What is {name}'s favourite food?", "What food does {name} like best?",
                   "What does {name} like to eat most?"],
            "zh": ["{name}最喜欢吃什么？", "{name}最爱的食物是什么？", "{name}最喜欢的食物是什么？"]},
        "answer": {"en": "{name}'s favourite food is {value}.", "zh": "{name}最喜欢的食物是{value}。"},
        "followup": {"en": "And what is this person's favourite food?", "zh": "这个人最喜欢吃什么？"},
    },
    ("person", "instrument"): {
        "stem": {"en": "{name} plays the", "zh": "{name}演奏的乐器是"},
        "statement": {
            "en": ["In the evenings, {name} practises the {value}.", "{name} is good at playing the {value}."],
            "zh": ["{name}晚上常常练习{value}。", "{name}很会演奏{value}。"]},
        "forum_q": {
            "en": ["What's {name}'s instrument in the band?", "Saw {name} on stage last night. What was that instrument?"],
            "zh": ["{name}在乐队里玩什么乐器？", "昨晚看了{name}的演出，那是什么乐器？"]},
        "forum_a": {
            "en": ["The {value}.", "That's the {value}, and they're great at it."],
            "zh": ["是{value}。", "是{value}，水平很高。"]},
        "question": {
            "en": ["What instrument does {name} play?", "Which instrument does {name} play?",
                   "What musical instrument does {name} play?"],
            "zh": ["{name}演奏什么乐器？", "{name}会哪种乐器？", "{name}玩的是什么乐器？"]},
        "answer": {"en": "{name} plays the {value}.", "zh": "{name}演奏的乐器是{value}。"},
        "followup": {"en": "Which instrument does this person play?", "zh": "这个人演奏什么乐器？"},
    },
}

OTHER_ENTITY = {  # follow-up that keeps the attribute and switches the entity
    "en": ["What about {name}?", "And {name}?", "How about {name}?"],
    "zh": ["那{name}呢？", "{name}呢？", "那么{name}呢？"],
}


def render(template, name, value=""):
    return template.format(name=name, value=value)


def stem_sentence(stem, value, lang):
    """The canonical sentence "stem value." that the encyclopedia states for every fact."""
    return f"{stem} {value}." if lang == "en" else f"{stem}{value}。"
