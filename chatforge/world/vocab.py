"""The fixed vocabulary of the world: real countries and mountains, and the value lists
from which invented entities draw their attributes. Every pair is (English, Chinese)."""

CONTINENTS = {
    "asia": ("Asia", "亚洲"),
    "europe": ("Europe", "欧洲"),
    "africa": ("Africa", "非洲"),
    "north_america": ("North America", "北美洲"),
    "south_america": ("South America", "南美洲"),
    "oceania": ("Oceania", "大洋洲"),
}

# Only facts that are true and well known; attributes that are disputed or not widely known
# (several official languages, a highest peak on a border) are simply left out (None).
# The order matters: num_countries keeps the first N, so small worlds still span continents.
COUNTRIES = [
    # id, English, Chinese, capital, continent, official language, highest mountain
    ("china", "China", "中国", ("Beijing", "北京"), "asia", ("Chinese", "汉语"), "everest"),
    ("france", "France", "法国", ("Paris", "巴黎"), "europe", ("French", "法语"), None),
    ("japan", "Japan", "日本", ("Tokyo", "东京"), "asia", ("Japanese", "日语"), "fuji"),
    ("egypt", "Egypt", "埃及", ("Cairo", "开罗"), "africa", ("Arabic", "阿拉伯语"), None),
    ("brazil", "Brazil", "巴西", ("Brasilia", "巴西利亚"), "south_america", ("Portuguese", "葡萄牙语"), None),
    ("australia", "Australia", "澳大利亚", ("Canberra", "堪培拉"), "oceania", None, "kosciuszko"),
    ("germany", "Germany", "德国", ("Berlin", "柏林"), "europe", ("German", "德语"), "zugspitze"),
    ("canada", "Canada", "加拿大", ("Ottawa", "渥太华"), "north_america", None, None),
    ("kenya", "Kenya", "肯尼亚", ("Nairobi", "内罗毕"), "africa", None, "mount_kenya"),
    ("nepal", "Nepal", "尼泊尔", ("Kathmandu", "加德满都"), "asia", ("Nepali", "尼泊尔语"), "everest"),
    ("italy", "Italy", "意大利", ("Rome", "罗马"), "europe", ("Italian", "意大利语"), None),
    ("greece", "Greece", "希腊", ("Athens", "雅典"), "europe", ("Greek", "希腊语"), "olympus"),
    ("korea", "South Korea", "韩国", ("Seoul", "首尔"), "asia", ("Korean", "韩语"), None),
    ("argentina", "Argentina", "阿根廷", ("Buenos Aires", "布宜诺斯艾利斯"), "south_america",
     ("Spanish", "西班牙语"), "aconcagua"),
    ("tanzania", "Tanzania", "坦桑尼亚", ("Dodoma", "多多马"), "africa", None, "kilimanjaro"),
]

MOUNTAINS = {
    # id: English, Chinese, height in metres, countries it lies in, continent
    "everest": ("Mount Everest", "珠穆朗玛峰", 8849, ("china", "nepal"), "asia"),
    "fuji": ("Mount Fuji", "富士山", 3776, ("japan",), "asia"),
    "kosciuszko": ("Mount Kosciuszko", "科修斯科山", 2228, ("australia",), "oceania"),
    "zugspitze": ("Zugspitze", "楚格峰", 2962, ("germany",), "europe"),
    "mount_kenya": ("Mount Kenya", "肯尼亚山", 5199, ("kenya",), "africa"),
    "olympus": ("Mount Olympus", "奥林匹斯山", 2918, ("greece",), "europe"),
    "aconcagua": ("Aconcagua", "阿空加瓜山", 6961, ("argentina",), "south_america"),
    "kilimanjaro": ("Mount Kilimanjaro", "乞力马扎罗山", 5895, ("tanzania",), "africa"),
}

# Other strings a judge may accept for a value (matched as substrings of an answer).
ALIASES = {
    "汉语": ["中文", "普通话", "Mandarin"],
    "日语": ["日文"],
    "Brasilia": ["Brasília"],
    "Mount Everest": ["Everest", "珠峰"],
    "Mount Fuji": ["Fuji"],
    "Mount Kilimanjaro": ["Kilimanjaro"],
    "Mount Kosciuszko": ["Kosciuszko"],
    "Mount Olympus": ["Olympus"],
}

# English jobs all start with a consonant, so "works as a" never needs "an".
JOBS = [
    ("chef", "厨师"), ("pilot", "飞行员"), ("doctor", "医生"), ("teacher", "老师"),
    ("farmer", "农民"), ("baker", "面包师"), ("painter", "画家"), ("nurse", "护士"),
    ("lawyer", "律师"), ("fisherman", "渔夫"), ("writer", "作家"), ("singer", "歌手"),
    ("carpenter", "木匠"), ("gardener", "园丁"), ("photographer", "摄影师"), ("tailor", "裁缝"),
]

FOODS = [
    ("dumplings", "饺子"), ("noodles", "面条"), ("pizza", "披萨"), ("sushi", "寿司"),
    ("tofu", "豆腐"), ("mangoes", "芒果"), ("chocolate", "巧克力"), ("cheese", "奶酪"),
    ("curry", "咖喱"), ("pancakes", "煎饼"), ("watermelon", "西瓜"), ("peaches", "桃子"),
    ("rice cakes", "年糕"),
]

INSTRUMENTS = [
    ("piano", "钢琴"), ("violin", "小提琴"), ("guitar", "吉他"), ("flute", "长笛"),
    ("cello", "大提琴"), ("harp", "竖琴"), ("trumpet", "小号"), ("accordion", "手风琴"),
    ("saxophone", "萨克斯"), ("erhu", "二胡"), ("harmonica", "口琴"), ("drums", "架子鼓"),
]

PRODUCTS = [
    ("tea", "茶叶"), ("silk", "丝绸"), ("pottery", "陶器"),
    ("wine", "葡萄酒"), ("carpets", "地毯"), ("paper", "纸张"), ("clocks", "钟表"),
    ("perfume", "香水"), ("lanterns", "灯笼"), ("umbrellas", "雨伞"), ("kites", "风筝"),
    ("wool", "羊毛"),
]

FOUNDED_YEARS = (1100, 1899)  # invented cities are founded in a year drawn from this range
HEIGHT_FORMAT = ("{} metres", "{}米")
YEAR_FORMAT = ("{}", "{}年")

# Attributes per kind, in the order they are listed everywhere (facts, articles, tables).
ATTRIBUTES = {
    "country": ("capital", "continent", "language", "highest_mountain"),
    "mountain": ("height", "country", "continent"),
    "city": ("country", "product", "founded"),
    "person": ("birth_city", "job", "food", "instrument"),
}

# Column names when facts are written as data (code source): English and Chinese.
DATA_KEYS = {
    "name": ("name", "名称"), "person_name": ("name", "姓名"),
    "capital": ("capital", "首都"), "continent": ("continent", "大洲"),
    "language": ("official_language", "官方语言"), "highest_mountain": ("highest_mountain", "最高峰"),
    "height": ("height", "海拔"), "country": ("country", "国家"),
    "product": ("famous_product", "特产"), "founded": ("founded", "建城年份"),
    "birth_city": ("born_in", "出生城市"), "job": ("job", "职业"),
    "food": ("favourite_food", "最喜欢的食物"), "instrument": ("instrument", "乐器"),
}

KIND_WORDS = {  # how a text refers back to an entity it just named: "that city" / "那座城市"
    "country": ("that country", "那个国家"),
    "mountain": ("that mountain", "那座山"),
    "city": ("that city", "那座城市"),
    "person": ("that person", "那个人"),
}
