"""Synthetic raw exports (``cdp generate``): raw exports of every source system, as those systems write them.

Deterministic for a seed: persons are simulated in chunks, each with its own NumPy generator seeded
by ``(seed, chunk)``, so output bytes depend only on the parameters (never on the clock, the worker
count or the order chunks finish in). Chunks run in parallel processes and write their own part
files; memory stays bounded by one chunk per worker.

Each person has latent traits (activity, disengagement drift, churn hazard, price sensitivity,
e-mail affinity, complaint propensity, category preferences). A weekly simulation makes
behaviour depend on them and on earlier behaviour: disengagement lowers browsing, e-mail opens and
purchases and raises the churn hazard, complaints raise it further, so churn and purchase are
predictable from what happened before.

Layout under ``--out`` (one folder per source, declared in ``conf/sources.yaml``)::

    products/catalogue.csv                      crm/members_full_<chunk>.csv (+ members_delta_)
    orders/<YYYY-MM>/part-<chunk>.jsonl          returns/<YYYY-MM>/part-<chunk>.jsonl
    events/<YYYY-MM>/part-<chunk>.jsonl          wechat/followers_<chunk>.csv
    service/tickets_<chunk>.csv (GBK)            email/<YYYY-MM>/part-<chunk>.jsonl
    sms/<YYYY-MM>/report_<chunk>.csv              responses/<email|sms>/<YYYY-MM>/responses_<chunk>.csv
    _truth/records.csv  (source, record_id, person_id)  _truth/persons.csv  _truth/broken.csv
    _truth/campaigns.csv  _truth/campaign_members.csv   (simulated sends: groups, outcomes, true lift)

Campaign sends (:data:`CAMPAIGNS`) are simulated by the generator itself rather than read from a
lake's exports: its output must depend on its parameters only (``cdp run --generate`` writes the raw
files before anything is exported), and the truth must know the control group, which an export never
contains. Their response files use the message-id shape ``cdp export`` writes. Responses to a lake's
real exports (``cdp generate --responses-from LAKE``) are :mod:`cdp.synthetic.responses`.

``_truth`` is kept apart: no job reads it; benchmarks and tests do.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

WEEKS = 104
PERIOD_MONTHS = 3
CST = timezone(timedelta(hours=8))
DEFAULT_END = "2025-06-30"
DEFAULT_CHUNK = 25_000

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢")
SURNAME_PINYIN = ["Wang", "Li", "Zhang", "Liu", "Chen", "Yang", "Huang", "Zhao", "Wu", "Zhou", "Xu", "Sun",
                  "Ma", "Zhu", "Hu", "Guo", "He", "Gao", "Lin", "Luo", "Zheng", "Liang", "Xie", "Song",
                  "Tang", "Xu", "Han", "Feng", "Deng", "Cao", "Peng", "Zeng", "Xiao", "Tian", "Dong",
                  "Yuan", "Pan", "Yu", "Jiang", "Cai", "Yu", "Du", "Ye", "Cheng", "Su", "Wei", "Lv",
                  "Ding", "Ren", "Shen", "Yao", "Lu"]
GIVEN = [("伟", "Wei"), ("芳", "Fang"), ("娜", "Na"), ("秀英", "Xiuying"), ("敏", "Min"), ("静", "Jing"),
         ("丽", "Li"), ("强", "Qiang"), ("磊", "Lei"), ("军", "Jun"), ("洋", "Yang"), ("勇", "Yong"),
         ("艳", "Yan"), ("杰", "Jie"), ("娟", "Juan"), ("涛", "Tao"), ("明", "Ming"), ("超", "Chao"),
         ("秀兰", "Xiulan"), ("霞", "Xia"), ("平", "Ping"), ("刚", "Gang"), ("桂英", "Guiying"),
         ("子涵", "Zihan"), ("欣怡", "Xinyi"), ("梓萱", "Zixuan"), ("浩然", "Haoran"), ("宇轩", "Yuxuan"),
         ("雨桐", "Yutong"), ("思远", "Siyuan"), ("佳怡", "Jiayi"), ("俊杰", "Junjie"), ("晓明", "Xiaoming")]
WESTERN = ["Emily", "Michael", "Sophie", "David", "Anna", "James", "Grace", "Kevin", "Linda", "Tony",
           "Jessica", "Eric", "Vivian", "Jason", "Cindy", "Peter", "Amy", "Ryan", "Chloé", "José"]
CITIES = [  # city, province, tier, weight
    ("上海", "上海", 1, 9), ("北京", "北京", 1, 9), ("广州", "广东", 1, 7), ("深圳", "广东", 1, 7),
    ("杭州", "浙江", 2, 5), ("成都", "四川", 2, 5), ("南京", "江苏", 2, 4), ("武汉", "湖北", 2, 4),
    ("重庆", "重庆", 2, 4), ("西安", "陕西", 2, 3), ("苏州", "江苏", 2, 3), ("天津", "天津", 2, 3),
    ("长沙", "湖南", 2, 3), ("宁波", "浙江", 3, 2), ("无锡", "江苏", 3, 2), ("佛山", "广东", 3, 2),
    ("合肥", "安徽", 3, 2), ("昆明", "云南", 3, 2), ("温州", "浙江", 3, 2), ("洛阳", "河南", 4, 1),
    ("桂林", "广西", 4, 1), ("绵阳", "四川", 4, 1), ("赣州", "江西", 4, 1), ("大理", "云南", 5, 1)]
AREA_CODES = {"上海": "021", "北京": "010", "广州": "020", "深圳": "0755", "杭州": "0571", "成都": "028",
              "南京": "025", "武汉": "027", "重庆": "023", "西安": "029", "苏州": "0512", "天津": "022",
              "长沙": "0731", "宁波": "0574", "无锡": "0510", "佛山": "0757", "合肥": "0551", "昆明": "0871",
              "温州": "0577", "洛阳": "0379", "桂林": "0773", "绵阳": "0816", "赣州": "0797", "大理": "0872"}
CATEGORIES = {
    "apparel": ["tops", "dresses", "outerwear", "pants"], "shoes": ["sneakers", "boots", "sandals"],
    "beauty": ["skincare", "makeup", "fragrance"], "home": ["bedding", "kitchen", "decor"],
    "electronics": ["audio", "phones", "accessories"], "food": ["snacks", "tea", "health"],
    "baby": ["diapers", "toys", "formula"], "sports": ["fitness", "outdoor", "cycling"]}
BRANDS = ["Aurora", "北辰", "Lumi", "山海", "Vela", "MUJO", "青禾", "Kairo", "Nordik", "云朵", "Solis", "Pinea"]
PRICE_BASE = {"apparel": 199, "shoes": 399, "beauty": 259, "home": 159, "electronics": 899, "food": 59,
              "baby": 129, "sports": 299}
MOBILE_PREFIXES = ["130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152",
                   "155", "156", "157", "158", "159", "166", "176", "177", "178", "180", "181", "182",
                   "183", "185", "186", "187", "188", "189", "198", "199"]
EMAIL_DOMAINS = ["163.com", "126.com", "gmail.com", "outlook.com", "sina.com", "foxmail.com", "icloud.com",
                 "hotmail.com"]
EMAIL_TYPO_DOMAINS = {"163.com": "163.con", "gmail.com": "gmial.com", "qq.com": "qq.cm",
                      "outlook.com": "outlok.com"}
JUNK_PHONES = ["13800000000", "null", "N/A", "00000000000", "无", "-"]
JUNK_EMAILS = ["test@test.com", "null", "N/A", "none@none.com", "noemail"]
# Service lines an agent types as a ticket's contact phone (a courier's or the brand's own hotline):
# China's 400 (shared cost) and 800 (toll free) numbers, shared by unrelated customers.
SERVICE_LINES = ["400-820-8820", "800-830-8888", "4006-888-888"]
BRAND_APPID = "wx8a1f0c2b3d4e5f60"
STORE_APPID = "wx5c6d7e8f9a0b1c2d"
MP_APPID = "wx1a2b3c4d5e6f7a8b"
TICKET_CATEGORIES = ["delivery", "quality", "return", "inquiry", "billing", "account"]
PAYMENT = ["alipay", "wechat_pay", "unionpay", "card", "cash"]
SOURCES_WITH_TRUTH = ("crm_members", "orders", "returns", "events", "wechat_followers", "service_tickets",
                      "email_events", "sms_reports", "email_responses", "sms_responses")


@dataclass(frozen=True)
class SimulatedCampaign:
    """A campaign send the generator simulates, with a known effect (recorded in ``_truth``).

    ``uplift``: the chance that a treated member who would not have bought within the window, whose
    message was delivered and who has not churned, buys because of the message. The lift a
    measurement should find is in ``_truth/campaigns.csv`` (``true_abs_lift``: the members' mean of
    Y1 - Y0, both potential outcomes being known to the generator).
    """

    name: str
    channel: str        # email | sms
    week: int           # the send's week in the two-year history
    uplift: float
    target_share: float = 0.6    # of the channel's opted-in registered persons
    control_share: float = 0.3   # of the targeted: held out, never sent
    bounce_rate: float = 0.03
    window_days: int = 7         # conversion: a non-cancelled order within this many days after the send

    @property
    def message_id(self) -> str:
        # the shape cdp export writes (<audience>.<destination>.v<version>); no export of a lake sent it,
        # so cdp standardize leaves these responses unlinked
        return f"{self.name}.simulated.v1"

    def sent_at(self, start_ts: float) -> int:
        """Tuesday 10:00 China time of the send week, in epoch seconds."""
        return int(start_ts + self.week * 7 * 86400 + 86400 + 2 * 3600)


CAMPAIGNS: tuple[SimulatedCampaign, ...] = (
    SimulatedCampaign("spring_newsletter", "email", WEEKS - 30, uplift=0.06),
    SimulatedCampaign("flash_sale_sms", "sms", WEEKS - 22, uplift=0.05),
    SimulatedCampaign("summer_launch", "email", WEEKS - 12, uplift=0.10),
    SimulatedCampaign("members_day_sms", "sms", WEEKS - 5, uplift=0.04),
)


@dataclass(frozen=True)
class GenerateParams:
    out: Path
    customers: int
    seed: int
    end: date
    chunk_size: int = DEFAULT_CHUNK
    workers: int = 2

    @property
    def start(self) -> datetime:
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC) - timedelta(weeks=WEEKS)

    @property
    def chunks(self) -> int:
        return max(1, -(-self.customers // self.chunk_size))


@dataclass(frozen=True)
class GenerateResult:
    out: Path
    customers: int
    files: int
    records: dict[str, int]
    broken: dict[str, int]


# -- products -------------------------------------------------------------------------------------

def make_products(seed: int) -> list[dict[str, Any]]:
    """The catalogue: the same for every chunk (seeded by the seed alone)."""
    rng = np.random.default_rng([seed, 7_777_777])
    products = []
    for c_index, (category, subcategories) in enumerate(CATEGORIES.items()):
        for s_index, sub in enumerate(subcategories):
            for k in range(40):
                brand = BRANDS[int(rng.integers(len(BRANDS)))]
                price = round(float(PRICE_BASE[category] * rng.lognormal(0, 0.5)), 0) - 0.1
                products.append({"sku": f"SKU{c_index}{s_index}{k:03d}", "name": f"{brand} {sub} {k + 1}",
                                 "category": category, "subcategory": sub, "brand": brand,
                                 "price": max(price, 9.9)})
    return products


# -- formatting helpers ---------------------------------------------------------------------------

_FULLWIDTH_DIGITS = str.maketrans("0123456789+-", "０１２３４５６７８９＋－")


def format_phone(number: str, variant: int) -> str:
    """One of the ways people and systems write a Chinese mobile number."""
    if variant == 0:
        return number
    if variant == 1:
        return f"+86 {number[:3]} {number[3:7]} {number[7:]}"
    if variant == 2:
        return f"{number[:3]}-{number[3:7]}-{number[7:]}"
    if variant == 3:
        return f"0086{number}"
    if variant == 4:
        return f"86-{number}"
    if variant == 5:
        return number.translate(_FULLWIDTH_DIGITS)
    if variant == 6:
        return f"(+86){number[:3]} {number[3:]}"
    return f" {number} "


def gmail_variant(email: str, variant: int) -> str:
    """How a Gmail user writes the one mailbox in different systems: the googlemail.com alias, dots in
    the local part, a ``+tag`` sub-address (Gmail delivers all of them to the same inbox)."""
    local, _, domain = email.partition("@")
    if domain != "gmail.com" or variant > 2:
        return email
    if variant == 0:
        return f"{local}@googlemail.com"
    if variant == 1:
        return f"{'.'.join(local[i:i + 3] for i in range(0, len(local), 3))}@{domain}"
    return f"{local}+shop@{domain}"


def format_email(email: str, variant: int) -> str:
    if variant == 0:
        return email
    if variant == 1:
        return email.upper()
    if variant == 2:
        return f"  {email} "
    local, _, domain = email.partition("@")
    return f"{local.capitalize()}@{domain.upper()}"


def iso_cst(ts: float) -> str:
    return datetime.fromtimestamp(ts, CST).strftime("%Y-%m-%dT%H:%M:%S+08:00")


def local_cst(ts: float, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ts, CST).strftime(pattern)


def iso_utc_ms(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _ident(rng: np.random.Generator, n: int, alphabet: str, length: int) -> list[str]:
    letters = np.frombuffer(alphabet.encode("ascii"), dtype=np.uint8)
    text = letters[rng.integers(0, len(alphabet), size=n * length)].tobytes().decode("ascii")
    return [text[k * length:(k + 1) * length] for k in range(n)]


def _one_row_per_event(counts_by_week: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(person, week) of every event of a persons x weeks matrix of event counts, in person-major order."""
    who, week = np.nonzero(counts_by_week)
    counts = counts_by_week[who, week]
    return np.repeat(who, counts), np.repeat(week, counts)


def _typo(text: str, u: float) -> str:
    if len(text) < 2:
        return text
    i = int(u * (len(text) - 1))
    return text[:i] + text[i + 1] + text[i] + text[i + 2:]


def _period(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, CST)
    month = (moment.month - 1) // PERIOD_MONTHS * PERIOD_MONTHS + 1
    return f"{moment.year}-{month:02d}"


# -- one chunk ------------------------------------------------------------------------------------

class _Chunk:
    """Simulates one chunk of persons and writes their part files."""

    def __init__(self, params: GenerateParams, chunk: int, products: list[dict[str, Any]]) -> None:
        self.params = params
        self.chunk = chunk
        self.rng = np.random.default_rng([params.seed, chunk])
        first = chunk * params.chunk_size
        self.n = min(params.chunk_size, params.customers - first)
        self.first = first
        self.start_ts = params.start.timestamp()
        self.end_ts = self.start_ts + WEEKS * 7 * 86400
        self.products_by_category: dict[str, list[dict[str, Any]]] = {}
        for product in products:
            self.products_by_category.setdefault(product["category"], []).append(product)
        self.files: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # (source, file) -> lines
        self.truth: list[tuple[str, str, str]] = []
        self.broken: list[tuple[str, str, int, str]] = []
        self.seq = 0
        self._periods: dict[int, str] = {}
        # (message_id, person_id, group, converted_without, converted_with) of every campaign member
        self.campaign_truth: list[tuple[str, str, str, int, int]] = []

    # -- bookkeeping ----------------------------------------------------------------------------
    def emit(self, source: str, relpath: str, line: str, record_id: str | None, person: str | None) -> None:
        self.files.setdefault((source, relpath), []).append((line, None))
        if record_id is not None and person is not None:
            self.truth.append((source, record_id, person))

    def period(self, ts: float) -> str:
        """The export period (quarter, China time) of a moment; cached per day."""
        day = int((ts - self.start_ts) // 86400)
        label = self._periods.get(day)
        if label is None:
            label = self._periods[day] = _period(self.start_ts + day * 86400 + 43200)
        return label

    def next_id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}{self.chunk:04d}{self.seq:09d}"

    # -- persons --------------------------------------------------------------------------------
    def persons(self) -> dict[str, Any]:
        rng, n, g0 = self.rng, self.n, self.first
        gidx = np.arange(g0, g0 + n)
        sizes = rng.choice([1, 2, 3, 4], size=n, p=[0.55, 0.25, 0.12, 0.08])
        household = np.repeat(np.arange(n), sizes)[:n]  # consecutive persons share a household
        head = np.r_[True, household[1:] != household[:-1]]
        surname_idx = rng.integers(0, len(SURNAMES), size=n)
        surname_idx = surname_idx[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
        given_idx = rng.integers(0, len(GIVEN), size=n)
        western = rng.random(n) < 0.08
        western_idx = rng.integers(0, len(WESTERN), size=n)
        latin = rng.random(n) < 0.12
        gender = np.where(rng.random(n) < 0.55, "F", "M")
        age = rng.integers(18, 70, size=n)
        birth = [date(self.params.end.year - int(a), 1, 1) + timedelta(days=int(d))
                 for a, d in zip(age, rng.integers(0, 365, size=n), strict=True)]
        weights = np.array([c[3] for c in CITIES], dtype=float)
        city_idx = rng.choice(len(CITIES), size=n, p=weights / weights.sum())
        city_idx = city_idx[np.maximum.accumulate(np.where(head, np.arange(n), 0))]
        names = []
        for i in range(n):
            s = int(surname_idx[i])
            gv = GIVEN[int(given_idx[i])]
            if western[i]:
                names.append(f"{WESTERN[int(western_idx[i])]} {SURNAME_PINYIN[s]}")
            elif latin[i]:
                names.append(f"{SURNAME_PINYIN[s]} {gv[1]}")
            else:
                names.append(SURNAMES[s] + gv[0])
        member = rng.random(n) < 0.8
        # Unique mobile per person: a bijection of the global index (no accidental sharing).
        # (A * g + B) mod M is a bijection when gcd(A, M) = 1: no two persons share a mobile.
        space = len(MOBILE_PREFIXES) * 100_000_000
        mixed = (gidx.astype(np.int64) * 2_654_435_761 + 987_654_321) % space
        prefix = np.array(MOBILE_PREFIXES)[mixed // 100_000_000]
        suffix = mixed % 100_000_000
        phones = [f"{p}{s:08d}" for p, s in zip(prefix, suffix, strict=True)]
        has_email = rng.random(n) < 0.7
        qq = rng.random(n) < 0.4
        email_domain = rng.integers(0, len(EMAIL_DOMAINS), size=n)
        emails = []
        for i in range(n):
            if not has_email[i]:
                emails.append(None)
            elif qq[i]:
                emails.append(f"{100000 + (int(gidx[i]) * 7919) % 900_000_000}@qq.com")
            else:
                local = SURNAME_PINYIN[int(surname_idx[i])].lower() + GIVEN[int(given_idx[i])][1].lower()
                emails.append(f"{local}.{np.base_repr(int(gidx[i]), 36).lower()}@{EMAIL_DOMAINS[email_domain[i]]}")
        has_wechat = rng.random(n) < 0.75
        unionids = ["o" + s for s in _ident(rng, n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", 27)]
        member_no = [f"M{(int(g) * 7_654_321 + 100_000_007) % 1_000_000_000:09d}" for g in gidx]
        crm_id = [f"C{int(g) + 10_000_000:08d}" if rng.random() < 0.9 else None for g in gidx]
        registered_week = np.where(member, rng.integers(-150, WEEKS - 1, size=n), WEEKS)
        first_week = np.where(member, np.maximum(registered_week, 0), rng.integers(0, WEEKS - 4, size=n))
        cats = list(CATEGORIES)
        prefs = rng.dirichlet(np.full(len(cats), 0.4), size=n)
        has_app = rng.random(n) < 0.45
        uses_web = rng.random(n) < 0.7
        # Latent traits.
        traits = {
            "activity": np.clip(rng.lognormal(-0.2, 0.8, size=n), 0.05, 8.0),
            "drift": rng.normal(0.012, 0.02, size=n),
            "base_churn": np.clip(rng.lognormal(np.log(0.004), 0.6, size=n), 0.0005, 0.05),
            "price_sensitivity": rng.beta(2, 3, size=n),
            "email_affinity": rng.beta(1.5, 4, size=n),
            "complaint_propensity": rng.beta(1, 25, size=n),
        }
        return {"gidx": gidx, "household": household, "names": names, "gender": gender, "birth": birth,
                "city_idx": city_idx, "member": member, "phones": phones, "emails": emails,
                "has_wechat": has_wechat, "unionids": unionids, "member_no": member_no, "crm_id": crm_id,
                "registered_week": registered_week, "first_week": first_week, "prefs": prefs,
                "has_app": has_app, "uses_web": uses_web, "sizes": sizes, **traits}

    # -- weekly simulation ----------------------------------------------------------------------
    def simulate(self, p: dict[str, Any]) -> dict[str, np.ndarray]:
        """Weekly counts per person; behaviour feeds back into engagement and churn."""
        rng, n = self.rng, self.n
        sessions = np.zeros((n, WEEKS), dtype=np.int16)
        purchases = np.zeros((n, WEEKS), dtype=np.int16)
        tickets = np.zeros((n, WEEKS), dtype=np.int16)
        complaints = np.zeros((n, WEEKS), dtype=np.int16)
        engagement = np.zeros((n, WEEKS), dtype=np.float32)
        churn_week = np.full(n, -1, dtype=np.int32)
        alive = np.ones(n, dtype=bool)
        d = rng.normal(0.0, 0.3, size=n)
        recent_complaints = np.zeros(n)
        recent_purchases = np.zeros(n)
        activity = p["activity"]
        for w in range(WEEKS):
            active = alive & (w >= p["first_week"])
            d = np.clip(d + rng.normal(p["drift"], 0.12), -1.0, 4.0)
            # A purchase re-engages a little; a complaint disengages.
            d = d - 0.15 * np.minimum(recent_purchases, 2) * (rng.random(n) < 0.3) + 0.3 * (recent_complaints > 0.9)
            eng = np.exp(-np.maximum(d, 0.0))
            engagement[:, w] = np.where(active, eng, 0.0)
            s = rng.poisson(np.where(active, 0.09 * activity * eng, 0.0))
            sessions[:, w] = s
            buy_rate = 0.025 * activity * eng * (1 + 0.6 * np.minimum(s, 3))
            b = rng.poisson(np.where(active, buy_rate, 0.0))
            purchases[:, w] = b
            t = rng.random(n) < np.where(active, 0.002 + 0.15 * p["complaint_propensity"] * (b > 0), 0.0)
            c = t & (rng.random(n) < 0.25 + 2.0 * p["complaint_propensity"])
            tickets[:, w] = t
            complaints[:, w] = c
            recent_complaints = 0.85 * recent_complaints + c
            recent_purchases = 0.8 * recent_purchases + b
            hazard = p["base_churn"] * np.exp(1.3 * np.maximum(d, 0) + 1.2 * recent_complaints
                                              - 0.6 * np.minimum(recent_purchases, 2))
            churn = active & (rng.random(n) < np.minimum(hazard, 0.5))
            churn_week[churn] = w
            alive &= ~churn
        return {"sessions": sessions, "purchases": purchases, "tickets": tickets, "complaints": complaints,
                "engagement": engagement, "churn_week": churn_week}

    # -- sources --------------------------------------------------------------------------------
    def week_time(self, week: np.ndarray | int, u: np.ndarray | float, hour: np.ndarray | float) -> Any:
        day = np.floor(np.asarray(u) * 7)
        return self.start_ts + np.asarray(week) * 7 * 86400 + day * 86400 + (np.asarray(hour) - 8) * 3600

    def run(self) -> None:
        p = self.persons()
        sim = self.simulate(p)
        self.devices(p)
        orders = self.write_orders(p, sim)
        self.write_returns(orders)
        self.write_events(p, sim, orders)
        self.write_crm(p)
        self.write_wechat(p, sim)
        self.write_tickets(p, sim)
        self.write_email(p, sim)
        self.write_sms(p, sim)
        orders += self.write_campaigns(p, sim, orders)
        self.persons_truth = self.person_rows(p, sim, orders)

    def devices(self, p: dict[str, Any]) -> None:
        rng, n = self.rng, self.n
        hexes = _ident(rng, n * 4, "0123456789abcdef", 16)
        self.cookies = [[hexes[4 * i + k] + hexes[4 * i + 3][:4] for k in range(1 + int(rng.integers(0, 3)))]
                        for i in range(n)]
        uu = _ident(rng, n, "0123456789ABCDEF", 32)
        self.device = [f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}" if rng.random() < 0.5 else u[:16].lower()
                       for u in uu]
        tablets = _ident(rng, n, "0123456789abcdef", 16)
        household = p["household"]
        # One family tablet for about half the households with 2+ persons.
        household_size = np.bincount(household, minlength=n)
        has_tablet = (rng.random(n) < 0.5) & (household_size >= 2)  # indexed by household
        self.tablet: list[str | None] = [
            "tab" + tablets[int(h)][:13] if has_tablet[int(h)] else None for h in household]
        self.openid_mp = ["oMP" + s for s in _ident(rng, n, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", 25)]

    def phone_as_written(self, number: str, u: float, junk_rate: float = 0.0) -> str:
        if u < junk_rate:
            return JUNK_PHONES[int(u / junk_rate * len(JUNK_PHONES)) % len(JUNK_PHONES)]
        return format_phone(number, int(u * 1000) % 8 if u < 0.5 else 0)

    def email_as_written(self, email: str, u: float, junk_rate: float = 0.0) -> str:
        if u < junk_rate:
            return JUNK_EMAILS[int(u / junk_rate * len(JUNK_EMAILS)) % len(JUNK_EMAILS)]
        if u >= 0.4:  # the digits of u past the third pick a Gmail variant: no extra draw, same stream
            return gmail_variant(email, int(u * 1_000_000) % 6)
        return format_email(email, int(u * 1000) % 4)

    def write_orders(self, p: dict[str, Any], sim: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        rng = self.rng
        who, week = _one_row_per_event(sim["purchases"])
        m = len(who)
        u = rng.random((m, 8))
        hours = np.clip(rng.normal(15, 4, size=m), 8, 23)
        times = self.week_time(week, u[:, 0], hours) + rng.integers(0, 3600, size=m)
        cats = list(CATEGORIES)
        n_lines = 1 + rng.poisson(0.6, size=m)
        line_order = np.repeat(np.arange(m), n_lines)
        lines_total = int(n_lines.sum())
        cumulative = np.cumsum(p["prefs"], axis=1)
        line_cat = (cumulative[who[line_order]] < rng.random(lines_total)[:, None]).sum(axis=1)
        line_cat = line_cat.clip(0, len(cats) - 1).tolist()
        line_sku = rng.integers(0, 120, size=lines_total).tolist()
        line_qty = (1 + rng.poisson(0.2, size=lines_total)).tolist()
        line_disc = (rng.uniform(0, 0.3, size=lines_total) * p["price_sensitivity"][who[line_order]]).tolist()
        line_start = (np.cumsum(n_lines) - n_lines).tolist()
        extra_u = rng.random((m, 2))
        orders = []
        for k in range(m):
            i = int(who[k])
            person = f"P{int(p['gidx'][i]):08d}"
            ts = float(times[k])
            r = u[k].tolist()
            channel = ("pos" if r[1] < 0.35 else "online" if r[1] < 0.7 else
                       "app" if p["has_app"][i] else "mini_program" if p["has_wechat"][i] else "online")
            items = []
            for j in range(line_start[k], line_start[k] + int(n_lines[k])):
                category = cats[line_cat[j]]
                product = self.products_by_category[category][line_sku[j]]
                discount = round(product["price"] * line_disc[j], 2)
                items.append({"sku": product["sku"], "category": category, "qty": line_qty[j],
                              "price": product["price"], "discount": discount})
            coupon = (f"CP{int(week[k]) // 4:03d}{'ABCD'[int(r[2] * 4) % 4]}"
                      if r[2] < 0.5 * p["price_sensitivity"][i] else None)
            total = round(sum(it["qty"] * it["price"] - it["discount"] for it in items), 2)
            discount_amount = round(sum(it["discount"] for it in items) + (10.0 if coupon else 0.0), 2)
            buyer: dict[str, Any] = {}
            member = bool(p["member"][i])
            if member and r[3] < (0.95 if channel != "pos" else 0.7):
                buyer["member_no"] = p["member_no"][i] if r[4] > 0.02 else f" {p['member_no'][i].lower()}"
            if r[5] < (0.9 if channel != "pos" else 0.3) or (not buyer and r[5] < 0.97):
                buyer["phone"] = self.phone_as_written(p["phones"][i], float(extra_u[k, 0]),
                                                       junk_rate=0.06 if channel == "pos" else 0.01)
            if p["emails"][i] and channel != "pos" and r[6] < 0.4:
                buyer["email"] = self.email_as_written(p["emails"][i], float(extra_u[k, 1]), 0.01)
            if channel == "mini_program":
                buyer["openid"] = self.openid_mp[i]
            order_no = self.next_id("SO")
            status = "PAID" if r[7] > 0.04 else "CANCELLED"
            created = iso_cst(ts) if channel != "pos" else local_cst(ts)
            record = {"order_no": order_no, "channel": channel,
                      "store_id": f"S{int(p['city_idx'][i]):02d}{int(r[0] * 10):02d}" if channel == "pos" else None,
                      "created_at": created, "updated_at": created, "status": status, "buyer": buyer,
                      "items": items, "coupon_code": coupon, "pay_amount": total,
                      "discount_amount": discount_amount, "payment_method": PAYMENT[int(r[4] * 100) % 5],
                      "currency": "CNY"}
            orders.append({"record": record, "ts": ts, "person": person, "i": i, "channel": channel})
            period = self.period(ts)
            line = json.dumps(record, ensure_ascii=False)
            self.emit("orders", f"orders/{period}/part-{self.chunk:05d}.jsonl", line, order_no, person)
            if rng.random() < 0.01:  # re-exported in the next period's file (exact duplicate)
                nxt = self.period(min(ts + 92 * 86400, self.end_ts - 1))
                self.emit("orders", f"orders/{nxt}/part-{self.chunk:05d}.jsonl", line, None, None)
        return orders

    def write_returns(self, orders: list[dict[str, Any]]) -> None:
        rng = self.rng
        for order in orders:
            record = order["record"]
            if record["status"] != "PAID":
                continue
            returned = [it for it in record["items"] if rng.random() < 0.06]
            if not returned:
                continue
            ts = order["ts"] + float(rng.uniform(2, 20)) * 86400
            if ts >= self.end_ts:
                continue
            for it in returned:
                return_no = self.next_id("RT")
                rec = {"return_no": return_no, "order_no": record["order_no"], "sku": it["sku"],
                       "qty": it["qty"], "refund_amount": round(it["qty"] * it["price"] - it["discount"], 2),
                       "reason": ["size", "quality", "changed_mind", "damaged"][int(rng.integers(0, 4))],
                       "returned_at": iso_utc_ms(ts)}
                self.emit("returns", f"returns/{self.period(ts)}/part-{self.chunk:05d}.jsonl",
                          json.dumps(rec, ensure_ascii=False), return_no, order["person"])
            # The order system re-exports the order with its new status.
            updated = dict(record)
            updated["status"] = "REFUNDED" if len(returned) == len(record["items"]) else "PARTIAL_REFUND"
            updated["updated_at"] = iso_cst(ts) if order["channel"] != "pos" else local_cst(ts)
            self.emit("orders", f"orders/{self.period(ts)}/part-{self.chunk:05d}.jsonl",
                      json.dumps(updated, ensure_ascii=False), None, None)

    def write_events(self, p: dict[str, Any], sim: dict[str, np.ndarray], orders: list[dict[str, Any]]) -> None:
        """Behaviour events: sessions on web (cookie), app (device) and mini-program (openid).

        Random draws are vectorised over all events of the chunk; the loop only formats lines.
        """
        rng = self.rng
        who, week = _one_row_per_event(sim["sessions"])
        m = len(who)
        u = rng.random((m, 5))
        hours = np.clip(rng.normal(20, 3, size=m), 6, 23.9)
        starts = self.week_time(week, u[:, 0], hours)
        n_events = 1 + rng.geometric(0.4, size=m)
        total = int(n_events.sum())
        session_of = np.repeat(np.arange(m), n_events)
        position = np.arange(total) - np.repeat(np.cumsum(n_events) - n_events, n_events)
        kind_u = rng.random(total)
        cat_u = rng.random(total)
        cumulative = np.cumsum(p["prefs"], axis=1)
        category_idx = (cumulative[who[session_of]] < cat_u[:, None]).sum(axis=1).clip(0, len(CATEGORIES) - 1)
        sku_idx = rng.integers(0, 120, size=total)
        pick = rng.integers(0, 7, size=total)
        jitter = rng.integers(0, 1000, size=total)
        late = rng.random(total) < 0.01
        dupe = rng.random(total) < 0.003
        as_string = rng.random(total) < 0.05
        cats = list(CATEGORIES)
        queries = ["连衣裙", "sneakers", "面霜", "耳机", "tea", "婴儿车", "跑步鞋"]
        urls = ["/", "/sale", "/new", "/member", "/cart", "/search", "/brand"]
        # Per-session identity context.
        member = p["member"]
        logged_in_cookie: set[tuple[int, int]] = set()
        contexts = []
        for k in range(m):
            i = int(who[k])
            r = u[k]
            options = (["web"] if p["uses_web"][i] else []) \
                + (["app"] if p["has_app"][i] or self.tablet[i] is not None else []) \
                + (["mini_program"] if p["has_wechat"][i] else []) or ["web"]
            platform = options[int(r[1] * len(options))]
            ids = ""
            login_at = -1
            n = int(n_events[k])
            if platform == "web":
                cookies = self.cookies[i]
                c_index = min(int(week[k]) * len(cookies) // WEEKS, len(cookies) - 1)
                ids = f'"anonymous_id": "{cookies[c_index]}", '
                if member[i] and (r[2] < 0.35 or (i, c_index) in logged_in_cookie):
                    login_at = int(r[3] * n)
                    logged_in_cookie.add((i, c_index))
                first = "page_view"
            elif platform == "app":
                # The family tablet: the only app device of some members, a second one for others.
                shared = self.tablet[i] is not None and (not p["has_app"][i] or r[4] < 0.35)
                ids = f'"device_id": "{self.tablet[i] if shared else self.device[i]}", '
                login_at = 0 if member[i] and r[2] < 0.85 else -1
                first = "app_open"
                platform = "ios" if self.device[i][8:9] == "-" else "android"
            else:
                unionid = f'"{p["unionids"][i]}"' if r[4] < 0.9 else "null"
                ids = f'"mp": {{"appid": "{MP_APPID}", "openid": "{self.openid_mp[i]}", "unionid": {unionid}}}, '
                login_at = 0 if member[i] and r[2] < 0.6 else -1
                first = "mp_open"
            contexts.append((f"P{int(p['gidx'][i]):08d}", platform, ids, login_at, first, self.next_id("s"),
                             p["member_no"][i]))
        for j in range(total):
            k = int(session_of[j])
            person, platform, ids, login_at, first, session, member_no = contexts[k]
            e = int(position[j])
            if e == 0:
                etype = first
            elif e == login_at and platform == "web":
                etype = "login"
            else:
                x = kind_u[j]
                etype = ("product_view" if x < 0.55 else "search" if x < 0.7 else "add_to_cart" if x < 0.85
                         else "remove_from_cart" if x < 0.9 else "page_view")
            if etype in ("product_view", "add_to_cart", "remove_from_cart"):
                category = cats[int(category_idx[j])]
                sku = self.products_by_category[category][int(sku_idx[j])]["sku"]
                props = f'{{"sku": "{sku}", "category": "{category}"}}'
            elif etype == "search":
                props = f'{{"query": "{queries[int(pick[j])]}"}}'
            elif etype == "page_view":
                props = f'{{"url": "{urls[int(pick[j])]}"}}'
            else:
                props = "{}"
            user = f'"{member_no}"' if 0 <= login_at <= e else "null"
            self._event(person, etype, platform, float(starts[k]) + e * 45, ids, session, props, user,
                        int(jitter[j]), bool(late[j]), bool(dupe[j]), bool(as_string[j]))
        # Every online order leaves a checkout event in its channel.
        for order in orders:
            if order["channel"] == "pos":
                continue
            i = order["i"]
            record = order["record"]
            member_no = record["buyer"].get("member_no")
            platform = {"online": "web", "app": "app", "mini_program": "mini_program"}[order["channel"]]
            if platform == "web":
                cookies = self.cookies[i]
                c_index = min(int((order["ts"] - self.start_ts) // (7 * 86400)) * len(cookies) // WEEKS,
                              len(cookies) - 1)
                ids = f'"anonymous_id": "{cookies[c_index]}", '
            elif platform == "app":
                ids = f'"device_id": "{self.device[i]}", '
                platform = "ios" if self.device[i][8:9] == "-" else "android"
            else:
                ids = f'"mp": {{"appid": "{MP_APPID}", "openid": "{self.openid_mp[i]}", "unionid": null}}, '
            user = f'"{member_no.strip().upper()}"' if member_no else "null"
            self._event(order["person"], "checkout", platform, order["ts"] - 30, ids, self.next_id("s"),
                        f'{{"order_no": "{record["order_no"]}"}}', user, 0, False, False, False)

    def _event(self, person: str, etype: str, platform: str, ts: float, ids: str, session: str, props: str,
               user: str, jitter: int, late: bool, dupe: bool, as_string: bool) -> None:
        event_id = self.next_id("e")
        ms = int(ts * 1000) + jitter
        stamp = f'"{ms}"' if as_string else str(ms)
        line = (f'{{"event_id": "{event_id}", "event": "{etype}", "platform": "{platform}", "ts": {stamp}, '
                f'{ids}"user_id": {user}, "session_id": "{session}", "properties": {props}}}')
        # 1% arrive late: they land in the next period's export.
        export_ts = min(ts + 92 * 86400, self.end_ts - 1) if late else ts
        path = f"events/{self.period(export_ts)}/part-{self.chunk:05d}.jsonl"
        self.emit("events", path, line, event_id, person)
        if dupe:  # at-least-once delivery: the same event twice
            self.emit("events", path, line, None, None)

    def write_crm(self, p: dict[str, Any]) -> None:
        rng = self.rng
        header = ["member_no", "crm_id", "name", "gender", "birthday", "mobile", "email", "wx_unionid",
                  "province", "city", "level", "registered_at", "updated_at", "email_opt_in", "sms_opt_in"]
        full = f"crm/members_full_{self.chunk:05d}.csv"
        delta = f"crm/members_delta_{self.chunk:05d}.csv"
        self.files[("crm_members", full)] = [(_csv_line(header), "header")]
        self.files[("crm_members", delta)] = [(_csv_line(header), "header")]
        self.email_opt_in = np.zeros(self.n, dtype=bool)
        self.sms_opt_in = np.zeros(self.n, dtype=bool)
        for i in np.nonzero(p["member"])[0]:
            i = int(i)
            r = rng.random(12)
            city, province, _tier, _w = CITIES[int(p["city_idx"][i])]
            reg_ts = self.start_ts + int(p["registered_week"][i]) * 7 * 86400 + float(r[0]) * 86400 * 7
            upd_ts = max(reg_ts, self.start_ts) + float(r[1]) * 86400 * 200
            upd_ts = min(upd_ts, self.end_ts - 86400 * 30)
            gender = {"F": ["女", "F", "female", "2"], "M": ["男", "M", "male", "1"]}[str(p["gender"][i])]
            gtext = gender[int(r[2] * 4)] if r[3] > 0.05 else ""
            birthday = p["birth"][i].isoformat() if r[4] > 0.15 else ("1900-01-01" if r[4] < 0.03 else "")
            if r[4] > 0.9:
                birthday = f"{p['birth'][i].year}/{p['birth'][i].month}/{p['birth'][i].day}"
            email = p["emails"][i]
            self.email_opt_in[i] = bool(email) and r[6] < 0.7
            self.sms_opt_in[i] = r[7] < 0.6
            row = {"member_no": p["member_no"][i], "crm_id": p["crm_id"][i] or "",
                   "name": p["names"][i] if r[8] > 0.02 else "",
                   "gender": gtext, "birthday": birthday,
                   "mobile": self.phone_as_written(p["phones"][i], float(r[5]), junk_rate=0.01) if r[9] > 0.03 else "",
                   "email": self.email_as_written(email, float(r[10]), junk_rate=0.02) if email else
                   (JUNK_EMAILS[0] if r[10] < 0.03 else ""),
                   "wx_unionid": p["unionids"][i] if p["has_wechat"][i] and r[11] < 0.7 else "",
                   "province": province, "city": city,
                   "level": ["普通", "银卡", "金卡", "钻石"][min(3, int(p["activity"][i] * 1.2))],
                   "registered_at": local_cst(reg_ts, "%Y/%m/%d %H:%M:%S"),
                   "updated_at": local_cst(upd_ts, "%Y/%m/%d %H:%M:%S"),
                   "email_opt_in": "1" if self.email_opt_in[i] else "0",
                   "sms_opt_in": "Y" if self.sms_opt_in[i] else "N"}
            person = f"P{int(p['gidx'][i]):08d}"
            self.emit("crm_members", full, _csv_line([row[h] for h in header]), row["member_no"], person)
            if rng.random() < 0.04:  # a later change lands in the delta export
                changed = dict(row)
                changed["updated_at"] = local_cst(upd_ts + 86400 * 20, "%Y/%m/%d %H:%M:%S")
                changed["level"] = "金卡"
                changed["mobile"] = format_phone(p["phones"][i], 2)
                self.emit("crm_members", delta, _csv_line([changed[h] for h in header]), None, None)
            elif rng.random() < 0.01:  # the same row exported twice
                self.emit("crm_members", delta, _csv_line([row[h] for h in header]), None, None)

    def write_wechat(self, p: dict[str, Any], sim: dict[str, np.ndarray]) -> None:
        rng = self.rng
        header = ["appid", "openid", "unionid", "subscribe", "subscribe_time", "unsubscribe_time", "nickname"]
        path = f"wechat/followers_{self.chunk:05d}.csv"
        self.files[("wechat_followers", path)] = [(_csv_line(header), "header")]
        for i in np.nonzero(p["has_wechat"])[0]:
            i = int(i)
            for appid, rate in ((BRAND_APPID, 0.5), (STORE_APPID, 0.15)):
                if rng.random() >= rate:
                    continue
                first = int(p["first_week"][i])
                sub_ts = self.start_ts + (first + float(rng.uniform(0, max(1, WEEKS - first - 1)))) * 7 * 86400
                churn = int(sim["churn_week"][i])
                unsub_ts = None
                if churn >= 0 and rng.random() < 0.5:
                    unsub_ts = self.start_ts + (churn + float(rng.uniform(0, 4))) * 7 * 86400
                elif rng.random() < 0.08:
                    unsub_ts = sub_ts + float(rng.uniform(1, 300)) * 86400
                if unsub_ts is not None and (unsub_ts <= sub_ts or unsub_ts >= self.end_ts):
                    unsub_ts = None
                openid = "o" + _ident(rng, 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 27)[0]
                unionid = p["unionids"][i] if rng.random() < 0.95 else ""
                row = [appid, openid, unionid, "0" if unsub_ts else "1", str(int(sub_ts)),
                       str(int(unsub_ts)) if unsub_ts else "", p["names"][i][:1] + "~" if rng.random() < 0.5 else "🌸"]
                self.emit("wechat_followers", path, _csv_line(row), f"{appid}:{openid}",
                          f"P{int(p['gidx'][i]):08d}")

    def write_tickets(self, p: dict[str, Any], sim: dict[str, np.ndarray]) -> None:
        rng = self.rng
        header = ["ticket_id", "created_at", "member_no", "contact_phone", "contact_name", "category",
                  "is_complaint", "resolution_hours", "satisfaction", "channel"]
        path = f"service/tickets_{self.chunk:05d}.csv"
        self.files[("service_tickets", path)] = [(_csv_line(header), "header")]
        who, week = np.nonzero(sim["tickets"])
        for i, w in zip(who, week, strict=True):
            i, w = int(i), int(w)
            r = rng.random(8)
            ts = float(self.week_time(w, r[0], 9 + 9 * r[1]))
            complaint = bool(sim["complaints"][i, w])
            city = CITIES[int(p["city_idx"][i])][0]
            if r[2] < 0.08:  # a family landline
                phone = f"{AREA_CODES[city]}-{6000_0000 + int(p['household'][i] * 37 + self.chunk * 101) % 3000_0000:08d}"
                phone = phone[:-4] + " " + phone[-4:]
            elif r[2] < 0.095:  # a service line typed as the contact phone
                phone = SERVICE_LINES[int(r[3] * 1000) % len(SERVICE_LINES)]
            else:
                phone = self.phone_as_written(p["phones"][i], float(r[3]), junk_rate=0.02)
            hours = float(rng.lognormal(np.log(30 if complaint else 6), 0.8))
            satisfaction = "" if r[4] < 0.3 else str(int(np.clip(round(4.3 - 2.2 * complaint + rng.normal(0, 0.8)), 1, 5)))
            ticket_id = self.next_id("T")
            row = [ticket_id, local_cst(ts), p["member_no"][i] if p["member"][i] and r[5] < 0.8 else "", phone,
                   _typo(p["names"][i], float(r[6])) if r[7] < 0.05 else p["names"][i],
                   "complaint" if complaint and r[6] < 0.5 else TICKET_CATEGORIES[int(r[6] * 6) % 6],
                   "是" if complaint else "否", f"{hours:.1f}", satisfaction,
                   ["hotline", "online_chat", "wechat"][int(r[1] * 3) % 3]]
            self.emit("service_tickets", path, _csv_line(row), ticket_id, f"P{int(p['gidx'][i]):08d}")

    def write_email(self, p: dict[str, Any], sim: dict[str, np.ndarray]) -> None:
        """ESP event webhooks: delivered / open / click / bounce / unsubscribe, one JSON line each."""
        rng = self.rng
        eligible = np.nonzero(self.email_opt_in)[0]
        unsubscribed = np.zeros(self.n, dtype=bool)
        bad_address = rng.random(self.n) < 0.02
        for w in range(1, WEEKS, 2):
            campaign = f"C{w:03d}"
            send_ts = self.start_ts + w * 7 * 86400 + 86400 + 2 * 3600
            registered = p["registered_week"][eligible] <= w
            targets = eligible[registered & ~unsubscribed[eligible] & (rng.random(len(eligible)) < 0.3)]
            t = len(targets)
            u = rng.random((t, 6))
            delay = rng.exponential(6 * 3600, size=t)
            eng = sim["engagement"][targets, w]
            opens = u[:, 2] < p["email_affinity"][targets] * (0.15 + eng)
            clicks = opens & (u[:, 3] < 0.25)
            unsubscribes = ~bad_address[targets] & (u[:, 4] < 0.004 + 0.02 * (1 - eng))
            for k, i in enumerate(targets.tolist()):
                person = f"P{int(p['gidx'][i]):08d}"
                message = self.next_id("msg")
                address = self.email_as_written(p["emails"][i], float(u[k, 0]))
                if bad_address[i]:
                    address = address.replace("@", "@x")
                args = f'{{"member_no": "{p["member_no"][i]}"}}' if u[k, 1] < 0.8 else "{}"
                sent = send_ts + float(u[k, 5]) * 3600
                head = f'"sg_message_id": "{message}", "email": {json.dumps(address, ensure_ascii=False)}'
                tail = f'"campaign": "{campaign}", "unique_args": {args}'
                if bad_address[i]:
                    self._email(person, head, tail, "bounce", sent + 5, ', "reason": "550 mailbox unavailable"')
                    continue
                self._email(person, head, tail, "delivered", sent, "")
                opened = sent + float(delay[k])
                if opens[k] and opened < self.end_ts:
                    self._email(person, head, tail, "open", opened, "")
                    if clicks[k]:
                        self._email(person, head, tail, "click", opened + 30,
                                    ', "url": "https://shop.example.cn/sale"')
                if unsubscribes[k]:
                    self._email(person, head, tail, "unsubscribe", min(sent + 86400, self.end_ts - 1), "")
                    unsubscribed[i] = True

    def _email(self, person: str, head: str, tail: str, kind: str, at: float, extra: str) -> None:
        event_id = self.next_id("sg")
        line = (f'{{"sg_event_id": "{event_id}", {head}, "event": "{kind}", "timestamp": {int(at)}, '
                f'{tail}{extra}}}')
        self.emit("email_events", f"email/{self.period(at)}/part-{self.chunk:05d}.jsonl", line, event_id, person)

    def write_sms(self, p: dict[str, Any], sim: dict[str, np.ndarray]) -> None:
        """SMS gateway status reports (CSV): DELIVRD / UNDELIV / CLICK / TD (unsubscribe)."""
        rng = self.rng
        header = _csv_line(["report_id", "mobile", "status", "report_time", "template_id"])
        eligible = np.nonzero(self.sms_opt_in & p["member"])[0]
        stopped = np.zeros(self.n, dtype=bool)
        for w in range(2, WEEKS, 4):
            send_ts = self.start_ts + w * 7 * 86400 + 3 * 86400 + 3 * 3600
            targets = eligible[~stopped[eligible] & (rng.random(len(eligible)) < 0.25)
                               & (p["registered_week"][eligible] <= w)]
            u = rng.random((len(targets), 5))
            eng = sim["engagement"][targets, w]
            for k, i in enumerate(targets.tolist()):
                person = f"P{int(p['gidx'][i]):08d}"
                mobile = p["phones"][i] if u[k, 0] < 0.8 else "86" + p["phones"][i]
                sent = send_ts + float(u[k, 1]) * 600
                statuses = ["DELIVRD"] if u[k, 2] > 0.03 else ["UNDELIV"]
                if statuses[0] == "DELIVRD" and u[k, 3] < 0.08 * (0.3 + eng[k]):
                    statuses.append("CLICK")
                if statuses[0] == "DELIVRD" and u[k, 4] < 0.005 + 0.015 * (1 - eng[k]):
                    statuses.append("TD")
                    stopped[i] = True
                for j, status in enumerate(statuses):
                    at = sent + j * 1800
                    report_id = self.next_id("R")
                    path = f"sms/{self.period(at)}/report_{self.chunk:05d}.csv"
                    if ("sms_reports", path) not in self.files:
                        self.files[("sms_reports", path)] = [(header, "header")]
                    self.emit("sms_reports", path,
                              f"{report_id},{mobile},{status},{local_cst(at, '%Y%m%d%H%M%S')},TPL{w:03d}",
                              report_id, person)

    # -- campaign sends with a known effect ------------------------------------------------------
    def write_campaigns(self, p: dict[str, Any], sim: dict[str, np.ndarray],
                        organic: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Simulated campaign sends (:data:`CAMPAIGNS`): delivery and response files for the treated,
        incremental orders caused by the message, and each member's two potential outcomes in the truth.

        Per campaign, the channel's opted-in, registered persons are targeted at random and split at
        random into treatment and control (the generator assigns them, so the truth knows the groups).
        Every member has a baseline outcome Y0 (a non-cancelled organic order within the window) and an
        outcome under treatment Y1 = Y0 or (delivered, not churned and an uplift draw); only treated
        members get Y1 written as an order. Draws come from their own generator, so every other source's
        bytes are those of a generator without campaigns.

        Returns:
            the incremental orders (same shape as :meth:`write_orders`' items).
        """
        rng = np.random.default_rng([self.params.seed, self.chunk, 29])
        header = _csv_line(["response_id", "message_id", "campaign", "recipient", "event", "event_time",
                            "order_no", "amount"])
        cancelled = np.array([o["record"]["status"] == "CANCELLED" for o in organic], dtype=bool)
        buyer = np.array([o["i"] for o in organic], dtype=np.int64)
        created = np.array([int(o["ts"]) for o in organic], dtype=np.int64)  # files hold whole seconds
        extra_orders: list[dict[str, Any]] = []
        for campaign in CAMPAIGNS:
            sent_at = campaign.sent_at(self.start_ts)
            ends = sent_at + campaign.window_days * 86400
            if campaign.channel == "email":
                reachable = self.email_opt_in.copy()
            else:
                reachable = self.sms_opt_in & p["member"]
            eligible = reachable & (p["registered_week"] <= campaign.week) & (p["first_week"] <= campaign.week)
            members = np.nonzero(eligible & (rng.random(self.n) < campaign.target_share))[0]
            m = len(members)
            u = rng.random((m, 8))
            control = u[:, 0] < campaign.control_share
            in_window = ~cancelled & (created > sent_at) & (created <= ends)
            converted_without = np.isin(members, buyer[in_window])
            alive = (sim["churn_week"][members] < 0) | (sim["churn_week"][members] > campaign.week)
            delivered = u[:, 1] >= campaign.bounce_rate
            caused = ~converted_without & delivered & alive & (u[:, 2] < campaign.uplift)
            converted_with = converted_without | caused
            eng = sim["engagement"][members, campaign.week]
            affinity = p["email_affinity"][members] if campaign.channel == "email" else np.full(m, 0.3)
            opened = delivered & (campaign.channel == "email") & (u[:, 3] < affinity * (0.15 + eng) + caused)
            clicked = delivered & (caused | (u[:, 4] < (0.25 if campaign.channel == "email" else 0.08)
                                             * np.where(campaign.channel == "email", opened, 0.3 + eng)))
            unsubscribed = delivered & ~caused & (u[:, 5] < 0.004 + 0.02 * (1 - eng))
            path = f"responses/{campaign.channel}/{self.period(sent_at)}/responses_{self.chunk:05d}.csv"
            source = f"{campaign.channel}_responses"
            if (source, path) not in self.files:
                self.files[(source, path)] = [(header, "header")]
            for k, i in enumerate(members.tolist()):
                person = f"P{int(p['gidx'][i]):08d}"
                group = "control" if control[k] else "treatment"
                self.campaign_truth.append((campaign.message_id, person, group, int(converted_without[k]),
                                            int(converted_with[k])))
                if control[k]:
                    continue  # held out: never sent, so no response and no message-caused order
                recipient = p["emails"][i] if campaign.channel == "email" else "+86" + p["phones"][i]
                at = sent_at + int(u[k, 6] * 1800)
                responses = [("sent", at)]
                if not delivered[k]:
                    responses.append(("bounced", at + 20))
                else:
                    responses.append(("delivered", at + 20))
                    seen = at + 600 + int(u[k, 7] * 3 * 3600)
                    if opened[k]:
                        responses.append(("opened", seen))
                    if clicked[k]:
                        responses.append(("clicked", seen + 45))
                    if unsubscribed[k]:
                        responses.append(("unsubscribed", seen + 90))
                order = None
                if caused[k]:
                    bought = int(seen + 300 + rng.integers(0, campaign.window_days * 86400 - 4 * 3600 - 1200))
                    order = self._caused_order(p, i, person, bought, rng)
                    extra_orders.append(order)
                    responses.append(("converted", bought))
                for event, moment in responses:
                    response_id = self.next_id("RS")
                    order_no = order["record"]["order_no"] if event == "converted" and order else ""
                    amount = f"{order['record']['pay_amount']:.2f}" if event == "converted" and order else ""
                    line = _csv_line([response_id, campaign.message_id, campaign.name, recipient, event,
                                      datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                      order_no, amount])
                    self.emit(source, path, line, response_id, person)
        return extra_orders

    def _caused_order(self, p: dict[str, Any], i: int, person: str, at: int,
                      rng: np.random.Generator) -> dict[str, Any]:
        """An online order the message caused: one line of the person's favourite category, paid."""
        category = list(CATEGORIES)[int(np.argmax(p["prefs"][i]))]
        product = self.products_by_category[category][int(rng.integers(0, 120))]
        order_no = self.next_id("SO")
        created = iso_cst(at)
        buyer: dict[str, Any] = {"phone": p["phones"][i]}
        if p["member"][i]:
            buyer["member_no"] = p["member_no"][i]
        if p["emails"][i]:
            buyer["email"] = p["emails"][i]
        record = {"order_no": order_no, "channel": "online", "store_id": None, "created_at": created,
                  "updated_at": created, "status": "PAID", "buyer": buyer,
                  "items": [{"sku": product["sku"], "category": category, "qty": 1, "price": product["price"],
                             "discount": 0.0}],
                  "coupon_code": None, "pay_amount": product["price"], "discount_amount": 0.0,
                  "payment_method": PAYMENT[int(rng.integers(0, len(PAYMENT)))], "currency": "CNY"}
        self.emit("orders", f"orders/{self.period(at)}/part-{self.chunk:05d}.jsonl",
                  json.dumps(record, ensure_ascii=False), order_no, person)
        return {"record": record, "ts": float(at), "person": person, "i": i, "channel": "online"}

    def person_rows(self, p: dict[str, Any], sim: dict[str, np.ndarray], orders: list[dict[str, Any]]) -> list[list[Any]]:
        spend = np.zeros(self.n)
        count = np.zeros(self.n, dtype=int)
        for order in orders:
            if order["record"]["status"] == "PAID":
                spend[order["i"]] += order["record"]["pay_amount"]
                count[order["i"]] += 1
        cats = list(CATEGORIES)
        rows = []
        for i in range(self.n):
            city, province, tier, _ = CITIES[int(p["city_idx"][i])]
            churn = int(sim["churn_week"][i])
            rows.append([
                f"P{int(p['gidx'][i]):08d}", f"H{self.chunk:04d}{int(p['household'][i]):06d}", p["names"][i],
                p["gender"][i], p["birth"][i].isoformat(), city, province, tier,
                int(bool(p["member"][i])), p["member_no"][i] if p["member"][i] else "", "+86" + p["phones"][i],
                p["emails"][i] or "", p["unionids"][i] if p["has_wechat"][i] else "",
                (self.params.start + timedelta(weeks=int(p["first_week"][i]))).date().isoformat(),
                f"{p['activity'][i]:.4f}", f"{p['drift'][i]:.4f}", f"{p['base_churn'][i]:.5f}",
                f"{p['price_sensitivity'][i]:.4f}", f"{p['email_affinity'][i]:.4f}",
                f"{p['complaint_propensity'][i]:.4f}", cats[int(np.argmax(p["prefs"][i]))],
                ";".join(f"{x:.3f}" for x in p["prefs"][i]),
                (self.params.start + timedelta(weeks=churn)).date().isoformat() if churn >= 0 else "",
                int(count[i]), f"{spend[i]:.2f}"])
        return rows

    # -- broken records -------------------------------------------------------------------------
    def break_some(self) -> None:
        """Insert a few deliberately broken records per source into this chunk's files."""
        rng = self.rng
        breakers: dict[str, list[tuple[str, Callable[[str], str]]]] = {
            "orders": [("malformed JSON", lambda s: s[: len(s) // 2]),
                       ("items[].qty", lambda s: _json_edit(s, lambda r: r["items"][0].update(qty="two"))),
                       ("order_no", lambda s: _json_edit(s, lambda r: r.pop("order_no"))),
                       ("created_at", lambda s: _json_edit(s, lambda r: r.update(created_at="2024-02-30T10:00:00+08:00")))],
            "events": [("malformed JSON", lambda s: s.replace('"event":', '"event"', 1)),
                       ("ts", lambda s: _json_edit(s, lambda r: r.update(ts="yesterday"))),
                       ("event_id", lambda s: _json_edit(s, lambda r: r.update(event_id=None)))],
            "returns": [("malformed JSON", lambda s: s[:-3])],
            "email_events": [("timestamp", lambda s: _json_edit(s, lambda r: r.update(timestamp=-5))),
                             ("malformed JSON", lambda s: "{" + s)],
            "crm_members": [("malformed CSV line", lambda s: s.rsplit(",", 3)[0]),
                            ("updated_at", lambda s: _csv_edit(s, 12, "2024/13/45 25:61:00")),
                            ("member_no", lambda s: _csv_edit(s, 0, ""))],
            "service_tickets": [("resolution_hours", lambda s: _csv_edit(s, 7, "三小时")),
                                ("created_at", lambda s: _csv_edit(s, 1, "2023-02-29 09:00:00"))],
            "wechat_followers": [("subscribe_time", lambda s: _csv_edit(s, 4, "not-a-time"))],
            "sms_reports": [("malformed CSV line", lambda s: s + ",extra,columns")],
        }
        for source, kinds in breakers.items():
            files = sorted(path for (src, path) in self.files if src == source)
            if not files:
                continue
            for k, (reason, mutate) in enumerate(kinds):
                path = files[int(rng.integers(0, len(files)))]
                lines = self.files[(source, path)]
                candidates = [j for j, (_, tag) in enumerate(lines) if tag is None]
                if not candidates:
                    continue
                template = lines[candidates[int(rng.integers(0, len(candidates)))]][0]
                broken = mutate(_fresh_id(source, template, f"BROKEN{self.chunk:04d}{k}"))
                position = int(rng.integers(1 if lines[0][1] == "header" else 0, len(lines) + 1))
                lines.insert(position, (broken, f"broken:{reason}"))

    def write_files(self, out: Path) -> tuple[int, dict[str, int]]:
        encodings = {"service_tickets": "gbk", "crm_members": "utf-8-sig"}
        records: dict[str, int] = {}
        for (source, relpath), lines in sorted(self.files.items()):
            target = out / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            text = "".join(line + "\n" for line, _ in lines)
            encoding = encodings.get(source, "utf-8")
            target.write_bytes(text.encode(encoding, errors="replace") if encoding != "utf-8-sig"
                               else text.encode("utf-8-sig"))
            for number, (_, tag) in enumerate(lines, start=1):
                if tag is not None and tag.startswith("broken:"):
                    self.broken.append((source, relpath, number, tag[len("broken:"):]))
            records[source] = records.get(source, 0) + sum(1 for _, tag in lines if tag != "header")
        return len(self.files), records


def _fresh_id(source: str, line: str, marker: str) -> str:
    """Give a broken copy its own record id so it never collides with the valid original."""
    keys = {"orders": "order_no", "events": "event_id", "returns": "return_no", "email_events": "sg_event_id"}
    if source in keys:
        record = json.loads(line)
        record[keys[source]] = marker
        return json.dumps(record, ensure_ascii=False)
    columns = next(csv.reader([line]))
    columns[0 if source != "wechat_followers" else 1] = marker
    return _csv_line(columns)


def _json_edit(line: str, edit: Callable[[dict[str, Any]], Any]) -> str:
    record = json.loads(line)
    edit(record)
    return json.dumps(record, ensure_ascii=False)


def _csv_edit(line: str, index: int, value: str) -> str:
    columns = next(csv.reader([line]))
    columns[index] = value
    return _csv_line(columns)


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(["" if v is None else v for v in values])
    return buffer.getvalue()


PERSON_HEADER = ["person_id", "household_id", "name", "gender", "birth_date", "city", "province", "city_tier",
                 "is_member", "member_no", "phone", "email", "unionid", "first_active", "activity",
                 "disengagement_drift", "base_churn_hazard", "price_sensitivity", "email_affinity",
                 "complaint_propensity", "top_category", "category_prefs", "churn_date", "paid_orders",
                 "paid_spend"]


CAMPAIGN_MEMBER_HEADER = ["message_id", "person_id", "group", "converted_without", "converted_with"]
CAMPAIGN_HEADER = ["message_id", "campaign", "channel", "sent_at", "window_days", "uplift", "members",
                   "treatment", "control", "true_rate_without", "true_rate_with", "true_abs_lift"]


def _write_campaign_truth(members_file: Path, target: Path, start_ts: float) -> None:
    """Per campaign: its parameters, group sizes and the true lift over its members (mean of Y1 - Y0)."""
    totals: dict[str, list[int]] = {c.message_id: [0, 0, 0, 0] for c in CAMPAIGNS}  # members, control, Y0, Y1
    with members_file.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            total = totals[row["message_id"]]
            total[0] += 1
            total[1] += row["group"] == "control"
            total[2] += int(row["converted_without"])
            total[3] += int(row["converted_with"])
    rows = []
    for c in CAMPAIGNS:
        members, control, without, with_ = totals[c.message_id]
        rate_without, rate_with = (without / members, with_ / members) if members else (0.0, 0.0)
        rows.append([c.message_id, c.name, c.channel,
                     datetime.fromtimestamp(c.sent_at(start_ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), c.window_days,
                     c.uplift, members, members - control, control, f"{rate_without:.6f}", f"{rate_with:.6f}",
                     f"{rate_with - rate_without:.6f}"])
    with target.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([CAMPAIGN_HEADER, *rows])


def read_campaign_truth(out: Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``_truth/campaigns.csv`` and ``_truth/campaign_members.csv`` of a generated folder (for benchmarks
    and tests: no job reads the truth)."""
    with (out / "_truth" / "campaigns.csv").open(encoding="utf-8") as handle:
        campaigns = list(csv.DictReader(handle))
    with (out / "_truth" / "campaign_members.csv").open(encoding="utf-8") as handle:
        members = list(csv.DictReader(handle))
    return campaigns, members


ORDER_STATUSES = {"PAID": "paid", "CANCELLED": "cancelled", "REFUNDED": "returned", "PARTIAL_REFUND": "partially_returned"}


def read_orders(out: Path) -> list[tuple[str, str, int, str, str, float]]:
    """Every valid order of a generated folder as ``cdp standardize`` would see it, with its true person.

    For benchmarks and tests that check a measurement against the truth without running the pipeline:
    broken copies are left out (they are not in ``_truth/records.csv``), a re-exported order keeps its
    latest status (as ``on_duplicate_key: latest`` does), times are whole seconds (online systems write
    +08:00 offsets, tills China local time without one), statuses are mapped as ``conf/sources.yaml``
    maps them.

    Returns:
        (person_id, order_no, created epoch seconds, channel, status, pay_amount) per order.
    """
    with (out / "_truth" / "records.csv").open(encoding="utf-8") as handle:
        person_of = {row["record_id"]: row["person_id"] for row in csv.DictReader(handle) if row["source"] == "orders"}
    latest: dict[str, dict[str, Any]] = {}
    for path in sorted((out / "orders").rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a deliberately broken line
            order_no = record.get("order_no")
            if order_no in person_of and (order_no not in latest
                                          or record["updated_at"] >= latest[order_no]["updated_at"]):
                latest[order_no] = record
    rows = []
    for order_no, record in sorted(latest.items()):
        created = record["created_at"]
        moment = (datetime.fromisoformat(created) if "+" in created
                  else datetime.strptime(created, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CST))
        rows.append((person_of[order_no], order_no, int(moment.timestamp()), record["channel"],
                     ORDER_STATUSES[record["status"]], float(record["pay_amount"])))
    return rows


def _run_chunk(args: tuple[GenerateParams, int, list[dict[str, Any]]]) -> tuple[int, dict[str, int], dict[str, int]]:
    params, chunk, products = args
    state = _Chunk(params, chunk, products)
    state.run()
    state.break_some()
    files, records = state.write_files(params.out)
    parts = params.out / "_truth" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    with (parts / f"records-{chunk:05d}.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(state.truth)
    with (parts / f"persons-{chunk:05d}.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(state.persons_truth)
    with (parts / f"broken-{chunk:05d}.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(state.broken)
    with (parts / f"campaign_members-{chunk:05d}.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(state.campaign_truth)
    broken: dict[str, int] = {}
    for source, *_ in state.broken:
        broken[source] = broken.get(source, 0) + 1
    return files, records, broken


def _concat(parts: list[Path], target: Path, header: list[str]) -> None:
    with target.open("wb") as out:
        out.write((",".join(header) + "\n").encode())
        for part in parts:
            with part.open("rb") as handle:
                shutil.copyfileobj(handle, out)


def generate(params: GenerateParams) -> GenerateResult:
    """Write every source's raw files and the ground truth under ``params.out``."""
    out = params.out
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out}: directory is not empty; generate writes into a fresh directory")
    out.mkdir(parents=True, exist_ok=True)
    products = make_products(params.seed)
    (out / "products").mkdir()
    header = ["sku", "name", "category", "subcategory", "brand", "price"]
    lines = [_csv_line(header)] + [_csv_line([p[h] if h != "price" else f"{p['price']:.2f}" for h in header])
                                   for p in products]
    lines.insert(7, _csv_line(["SKU_BAD", "broken price", "home", "decor", "Lumi", "免费"]))
    (out / "products" / "catalogue.csv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tasks = [(params, chunk, products) for chunk in range(params.chunks)]
    totals: dict[str, int] = {"products": len(products) + 1}
    broken_totals: dict[str, int] = {"products": 1}
    files = 1
    results: Iterator[tuple[int, dict[str, int], dict[str, int]]]
    if params.workers > 1 and params.chunks > 1:
        with ProcessPoolExecutor(max_workers=params.workers) as pool:
            results = iter(list(pool.map(_run_chunk, tasks)))
    else:
        results = map(_run_chunk, tasks)
    for chunk_files, records, broken in results:
        files += chunk_files
        for key, value in records.items():
            totals[key] = totals.get(key, 0) + value
        for key, value in broken.items():
            broken_totals[key] = broken_totals.get(key, 0) + value
    truth = out / "_truth"
    parts = truth / "parts"
    _concat(sorted(parts.glob("records-*.csv")), truth / "records.csv", ["source", "record_id", "person_id"])
    _concat(sorted(parts.glob("persons-*.csv")), truth / "persons.csv", PERSON_HEADER)
    _concat(sorted(parts.glob("broken-*.csv")), truth / "broken.csv", ["source", "file", "line", "reason"])
    with (truth / "broken.csv").open("a", encoding="utf-8") as handle:
        handle.write("products,products/catalogue.csv,8,price\n")
    _concat(sorted(parts.glob("campaign_members-*.csv")), truth / "campaign_members.csv", CAMPAIGN_MEMBER_HEADER)
    _write_campaign_truth(truth / "campaign_members.csv", truth / "campaigns.csv", params.start.timestamp())
    shutil.rmtree(parts)
    (truth / "params.json").write_text(json.dumps({
        "customers": params.customers, "seed": params.seed, "end": params.end.isoformat(),
        "start": params.start.date().isoformat(), "chunk_size": params.chunk_size}, indent=2) + "\n")
    logger.info("generated %d customers into %s: %d files, records %s, broken %s", params.customers, out,
                files, totals, broken_totals)
    return GenerateResult(out=out, customers=params.customers, files=files, records=totals, broken=broken_totals)




# Responses to a lake's real exports (cdp generate --responses-from): a module of its own, re-exported here
# last because it builds on the names above.
from cdp.synthetic.responses import (  # noqa: E402, F401 - re-exported
    ExportSend,
    ResponseParams,
    ResponsesResult,
    SendTruth,
    read_send_truth,
    simulate_responses,
)
