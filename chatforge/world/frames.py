"""The text around facts in corpus documents: article leads, news intros, story filler,
forum handles. Kept apart from the fact phrasings so each source reads differently."""

ENCYCLOPEDIA_LEAD = {
    "person": {"en": "This article is about the person {name}.", "zh": "本条目介绍人物{name}。"},
    "city": {"en": "This article is about the city of {name}.", "zh": "本条目介绍城市{name}。"},
    "country": {"en": "This article is about the country {name}.", "zh": "本条目介绍国家{name}。"},
    "mountain": {"en": "This article is about the mountain {name}.", "zh": "本条目介绍山峰{name}。"},
}
ENCYCLOPEDIA_SEE_ALSO = {"en": "See also: {names}.", "zh": "参见：{names}。"}
ENCYCLOPEDIA_SECTION = {"en": ["Overview", "Facts", "Summary"], "zh": ["概况", "基本信息", "简介"]}

NEWS_HEADLINE = {
    "en": ["News in brief", "Today's headlines", "Around the world", "Weekly round-up"],
    "zh": ["简讯", "今日新闻", "天下见闻", "一周要闻"],
}
NEWS_INTRO = {
    "person": {
        "en": ["{name} was in the news again this week.", "Local readers may recognise {name}.",
               "{name} spoke at a community event on Friday."],
        "zh": ["本周，{name}又上了新闻。", "本地读者也许认识{name}。", "星期天，{name}在一次活动上讲了话。"]},
    "city": {
        "en": ["The city council of {name} met on Monday.", "Tourism in {name} grew again this year."],
        "zh": ["{name}的人们星期一开了一次大会。", "今年去{name}的游客又增加了。"]},
    "country": {
        "en": ["A trade delegation from {name} arrived this morning.",
               "Officials in {name} announced a new school programme."],
        "zh": ["今天上午，一些来自{name}的客人到了。", "{name}的学校今年有了新的计划。"]},
    "mountain": {
        "en": ["Climbers returned safely from {name} this week.", "Heavy snow fell on {name} last night."],
        "zh": ["本周，登山者从{name}安全返回。", "昨晚，{name}下了大雪。"]},
}

STORY_INTRO = {
    "person": {
        "en": ["This is a short story about {name}.", "Everyone on the street knew {name}.",
               "{name} woke up early on a quiet Sunday.", "Nobody expected {name} to come back so soon."],
        "zh": ["这是一个关于{name}的小故事。", "街上的人都认识{name}。",
               "一个安静的星期天，{name}很早就醒了。", "谁也没想到{name}这么快就回来了。"]},
    "place": {
        "en": ["Last summer, a traveller set out for {name}.", "My grandmother often told me about {name}.",
               "The train was slow, but at last we saw {name}."],
        "zh": ["去年夏天，一位旅行者出发去了{name}。", "奶奶常常跟我讲起{name}。",
               "火车开了很久，我们到了{name}。"]},
}
STORY_FILLER = {
    "en": ["The wind was cold, but the market was busy.", "A friend called with good news.",
           "Rain tapped on the window all afternoon.", "There was bread and tea on the table.",
           "It was the kind of day people remember for years.", "A dog barked somewhere down the road.",
           "The old clock in the hall struck nine."],
    "zh": ["风很大，可是外面人很多。", "一位朋友打来电话，带来了好消息。", "下午一直在下雨。",
           "桌上放着面包和茶。", "那是会被人记很多年的一天。", "外面有狗在叫。", "家里的老钟响了。"],
}
STORY_ENDING = {
    "person": {
        "en": ["And that was how the day ended.", "{name} smiled and walked home.",
               "The next morning, everything felt new again."],
        "zh": ["那一天就这样过去了。", "{name}笑了笑，走回了家。", "第二天早上，一切又是新的。"]},
    "place": {
        "en": ["It was a trip worth taking.", "We promised to come back one day."],
        "zh": ["那是一次值得的旅行。", "我们约好以后还要再来。"]},
}

FORUM_TITLE = {
    "en": ["Question about {name}", "{name}?", "Help: something about {name}", "Random thought on {name}"],
    "zh": ["关于{name}的问题", "求助：{name}", "问一下{name}的事", "聊聊{name}"],
}
FORUM_HANDLES = {
    "en": ["mapfan", "quietfox", "hiker_88", "tea_addict", "nightowl", "curious_cat", "old_sailor",
           "bookworm42", "rainy_day", "trainspotter"],
    "zh": ["路人甲", "爱旅行的猫", "小明同学", "夜猫子", "老水手", "书虫", "爱吃的人", "山里人", "下雨天", "火车迷"],
}
FORUM_ALSO = {"en": ["One more thing. {fact}", "Related: {fact}", "{fact}"],
              "zh": ["再说一句，{fact}", "还有，{fact}"]}
FORUM_THANKS = {"en": ["Thanks, everyone!", "Great, thank you.", "That settles it."],
                "zh": ["谢谢大家！", "明白了，多谢。", "好的，懂了。"]}
QUESTION_LIST_HEADER = {
    "en": ["Questions from this week's thread (answers later):", "Random questions I have:",
           "Quiz night list:", "Things I still want to find out:"],
    "zh": ["这周的问题（答案以后再说）：", "我的一些问题：", "问答比赛的问题：", "我还想知道的事："],
}

CODE_COMMENT = {
    "en": ["# records exported from the city archive", "# sample data for the quiz app",
           "# TODO: check these values again"],
    "zh": ["# 城市里的老记录", "# 问答用的数据", "# 这些数据还要再看一下"],
}
CODE_GLOSSARY_COMMENT = "# name glossary / 名称对照表"
CODE_VARIABLE = {"person": "people", "city": "cities", "country": "countries", "mountain": "mountains"}
