"""The PII battery: realistic sentences with one piece of PII each, and hard negatives.

Written for this project (no third-party data); every value is fictitious or a published test
value (card numbers from payment processors' test lists, IBANs from ISO 13616 examples, phone
numbers from reserved/fictional ranges such as 555-01xx and Ofcom's 07700 900xxx drama range).

Scoring (shared by tests/test_redact.py and benchmarks/pii.py): a detector returns spans of
the *folded* text (:func:`cdcda_fl.privacy.redact.fold`, the form every detector sees). A case
is caught when the folded secret lies wholly inside detected spans, i.e. no character of the
secret would survive. A negative is a false positive when any span is found in it at all. Span
precision counts every span found: one touching its sentence's secret is right, any other wrong.

docs/privacy.md has the counts by kind and the measured recall of each candidate
(benchmarks/pii.py -> benchmarks/results/pii.json).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

# (kind, sentence, the secret that must not survive)
POSITIVES: list[tuple[str, str, str]] = [
    # ------------------------------------------------------------------ e-mail (plain, IDN, obfuscated)
    ("EMAIL", "Send the draft to maria.lopez@gmail.com before Friday.", "maria.lopez@gmail.com"),
    ("EMAIL", "Contact: j.smith+reviews@company.co.uk for returns", "j.smith+reviews@company.co.uk"),
    ("EMAIL", "My address is ANNA.K@Outlook.COM, write anytime.", "ANNA.K@Outlook.COM"),
    ("EMAIL", "questions go to user_99@sub.domain.example.net", "user_99@sub.domain.example.net"),
    ("EMAIL", "schreib mir an jürgen@müller.de, danke", "jürgen@müller.de"),
    ("EMAIL", "répondez à françois.dupont@exemple.fr s'il vous plaît", "françois.dupont@exemple.fr"),
    ("EMAIL", "联系 用户@例子.中国 谢谢", "用户@例子.中国"),
    ("EMAIL", "full-width ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ here", "ｊａｎｅ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
    ("EMAIL", "zero-width ja\u200bne@exam\u200bple.com here", "ja\u200bne@exam\u200bple.com"),
    ("EMAIL", "reach me: jane at example dot com", "jane at example dot com"),
    ("EMAIL", "reach me: jane [at] example [dot] org", "jane [at] example [dot] org"),
    ("EMAIL", "write to bob(at)mailbox(dot)de with the form", "bob(at)mailbox(dot)de"),
    ("EMAIL", "email me at tom dot baker at gmail dot com", "tom dot baker at gmail dot com"),
    # ------------------------------------------------------------------ phone (several countries)
    ("PHONE", "call me on +1 (555) 123-4567 after six", "+1 (555) 123-4567"),
    ("PHONE", "office line 555-123-4567, ask for Sam", "555-123-4567"),
    ("PHONE", "my cell is (415) 555-0132 if it's urgent", "(415) 555-0132"),
    ("PHONE", "text 555.867.5309 anytime", "555.867.5309"),
    ("PHONE", "ring 020 7946 0958 please", "020 7946 0958"),
    ("PHONE", "mobile: 07700 900123, evenings only", "07700 900123"),
    ("PHONE", "from abroad dial +44 7700 900123", "+44 7700 900123"),
    ("PHONE", "whatsapp +447946095812 please", "+447946095812"),
    ("PHONE", "Tel. 030 12345678 (Büro)", "030 12345678"),
    ("PHONE", "oder +49 30 12345678 anrufen", "+49 30 12345678"),
    ("PHONE", "tel. 030.1234.5678", "030.1234.5678"),
    ("PHONE", "appelle-moi au 06 12 34 56 78 ce soir", "06 12 34 56 78"),
    ("PHONE", "depuis l'étranger : +33 6 12 34 56 78", "+33 6 12 34 56 78"),
    ("PHONE", "my number is +91 98765 43210 in Pune", "+91 98765 43210"),
    # ------------------------------------------------------------------ URLs and handles
    ("URL", "see https://example.org/a?b=1 for more", "https://example.org/a?b=1"),
    ("URL", "my blog www.my-blog.net/post is new.", "www.my-blog.net/post"),
    ("URL", "link bit.ly/3xYz in bio", "bit.ly/3xYz"),
    ("URL", "photos at janedoe.com/gallery now", "janedoe.com/gallery"),
    ("HANDLE", "thanks @jack_dorsey for the tip!", "@jack_dorsey"),
    ("HANDLE", "follow me @Anna_Reads_99 on there", "@Anna_Reads_99"),
    # ------------------------------------------------------------------ network addresses
    ("IP", "my server at 192.168.1.23 is down again", "192.168.1.23"),
    ("IP", "the attack came from 203.0.113.77.", "203.0.113.77"),
    ("IP", "ssh into [10.0.0.5] and restart", "10.0.0.5"),
    ("IP", "v6 2001:db8:85a3::8a2e:370:7334 works", "2001:db8:85a3::8a2e:370:7334"),
    ("IP", "full 2001:0db8:0000:0000:0000:ff00:0042:8329 form", "2001:0db8:0000:0000:0000:ff00:0042:8329"),
    ("IP", "link-local fe80::1ff:fe23:4567:890a on eth0", "fe80::1ff:fe23:4567:890a"),
    ("IP", "mapped ::ffff:192.0.2.128 shows up", "::ffff:192.0.2.128"),
    ("MAC", "my laptop's mac 00:1A:2B:3C:4D:5E was banned", "00:1A:2B:3C:4D:5E"),
    ("MAC", "adapter 00-1a-2b-3c-4d-5e needs a driver", "00-1a-2b-3c-4d-5e"),
    ("MAC", "whitelist a4:83:e7:0b:2f:91 on the router", "a4:83:e7:0b:2f:91"),
    ("MAC", "cisco shows 001a.2b3c.4d5e in the table", "001a.2b3c.4d5e"),
    # ------------------------------------------------------------------ bank and card numbers
    ("IBAN", "pay to GB82WEST12345698765432 thanks", "GB82WEST12345698765432"),
    ("IBAN", "IBAN DE89 3704 0044 0532 0130 00 (Sparkasse)", "DE89 3704 0044 0532 0130 00"),
    ("IBAN", "iban fr1420041010050500013m02606", "fr1420041010050500013m02606"),
    ("IBAN", "rekening NL91 ABNA 0417 1643 00 graag", "NL91 ABNA 0417 1643 00"),
    ("IBAN", "cuenta ES91 2100 0418 4502 0005 1332", "ES91 2100 0418 4502 0005 1332"),
    ("IBAN", "Konto CH93 0076 2011 6238 5295 7", "CH93 0076 2011 6238 5295 7"),
    ("IBAN", "refund to BE71 0961 2345 6769 please", "BE71 0961 2345 6769"),
    ("IBAN", "send it to BE68 5390 0754 7034 now, thanks", "BE68 5390 0754 7034"),
    ("CARD", "card 4111 1111 1111 1111 expired", "4111 1111 1111 1111"),
    ("CARD", "amex 378282246310005 on file", "378282246310005"),
    ("CARD", "visa 4012-8888-8888-1881 declined", "4012-8888-8888-1881"),
    ("CARD", "mastercard 5555 5555 5555 4444 works", "5555 5555 5555 4444"),
    ("CARD", "discover 6011111111111117 was charged", "6011111111111117"),
    ("CARD", "amex as printed: 3782 822463 10005", "3782 822463 10005"),
    ("CARD", "diners 3056 9309 0259 04 still valid", "3056 9309 0259 04"),
    # ------------------------------------------------------------------ national ids
    ("ID", "my ssn is 536-90-4399, keep it safe", "536-90-4399"),
    ("ID", "SSN 219 09 9998 on the W-2", "219 09 9998"),
    ("ID", "NI number JG 10 37 75 A for payroll", "JG 10 37 75 A"),
    ("ID", "ni AB123456D on file", "AB123456D"),
    ("ID", "national insurance: ce 12 34 56 c", "ce 12 34 56 c"),
    # ------------------------------------------------------------------ dates of birth
    ("DATE", "I was born on 12/04/1990 in Leeds", "12/04/1990"),
    ("DATE", "DOB: 1990-04-12", "1990-04-12"),
    ("DATE", "birthday 4 March 1985!", "4 March 1985"),
    ("DATE", "date of birth: March 4, 1985", "March 4, 1985"),
    ("DATE", "born 03.07.1978 in Graz", "03.07.1978"),
    ("DATE", "d.o.b. 7 Sept 1962 (per passport)", "7 Sept 1962"),
    # ------------------------------------------------------------------ account numbers and other ids
    ("NUMBER", "account 12345678901234 at my bank", "12345678901234"),
    ("NUMBER", "account no 31926819", "31926819"),
    ("NUMBER", "sort code 20-00-00, account 55779911", "55779911"),
    ("NUMBER", "client id 00012345678", "00012345678"),
    ("NUMBER", "Kontonummer 0532013000 bei der Bank", "0532013000"),
    ("NUMBER", "policy number 8837 2201 renews soon", "8837 2201"),
]

# Second batch, written after redact.py was tuned on the first. Measured once before any change:
# 33/36 caught, 1/16 false positive (the misses: an upper-case obfuscated address with a two-part
# domain, a handle with a dot, "born on the 5th of May 1991"; the false positive "Patch 1.0.2.3").
# redact.py was then fixed on them, so they are tuned cases now; HOLDOUT_* below are not.
POSITIVES_2: list[tuple[str, str, str]] = [
    ("EMAIL", "Drop a line to dr.ahmed.khan@nhs.net if the results change.", "dr.ahmed.khan@nhs.net"),
    ("EMAIL", "my gmail is kate_w1985@googlemail.com lol", "kate_w1985@googlemail.com"),
    ("EMAIL", "Mail: info@bäckerei-schmidt.de", "info@bäckerei-schmidt.de"),
    ("EMAIL", "contact sarah (at) example (dot) com for tickets", "sarah (at) example (dot) com"),
    ("EMAIL", "e-mail: p.nowak@firma.com.pl", "p.nowak@firma.com.pl"),
    ("EMAIL", "Reply to MARK DOT JONES AT YAHOO DOT CO DOT UK", "MARK DOT JONES AT YAHOO DOT CO DOT UK"),
    ("PHONE", "Call our hotline at 1-800-555-0199 any time.", "1-800-555-0199"),
    ("PHONE", "ph: (02) 9876 5432 in Sydney", "(02) 9876 5432"),
    ("PHONE", "my mobile +61 412 345 678", "+61 412 345 678"),
    ("PHONE", "Ruf an: 0171 2345678", "0171 2345678"),
    ("PHONE", "reach the desk on +1 212 555 0147", "+1 212 555 0147"),
    ("PHONE", "tel +39 06 1234 5678 (Roma)", "+39 06 1234 5678"),
    ("PHONE", "numéro 01 42 68 53 00 à Paris", "01 42 68 53 00"),
    ("URL", "check out https://www.etsy.com/shop/JaneCrafts", "https://www.etsy.com/shop/JaneCrafts"),
    ("URL", "my site: jane-doe.dev has it", "jane-doe.dev"),
    ("HANDLE", "dm @kate.w on insta", "@kate.w"),
    ("IP", "blocked IP 172.16.254.1 twice", "172.16.254.1"),
    ("IP", "gateway 2001:db8::1 is reachable", "2001:db8::1"),
    ("MAC", "device MAC: F4-5C-89-AB-12-CD", "F4-5C-89-AB-12-CD"),
    ("IBAN", "Überweisung an AT61 1904 3002 3457 3201", "AT61 1904 3002 3457 3201"),
    ("IBAN", "IBAN: IT60 X054 2811 1010 0000 0123 456", "IT60 X054 2811 1010 0000 0123 456"),
    ("IBAN", "pay GB29 NWBK 6016 1331 9268 19 by Friday", "GB29 NWBK 6016 1331 9268 19"),
    ("CARD", "charged to 4242 4242 4242 4242 yesterday", "4242 4242 4242 4242"),
    ("CARD", "my card no. 5105-1051-0510-5100", "5105-1051-0510-5100"),
    ("CARD", "JCB 3530111333300000 abroad", "3530111333300000"),
    ("ID", "SSN: 401-55-7823", "401-55-7823"),
    ("ID", "NINO: PN 12 34 56 B", "PN 12 34 56 B"),
    ("ID", "my NI no is tw123456a", "tw123456a"),
    ("DATE", "Date of Birth 1984/11/23", "1984/11/23"),
    ("DATE", "born on the 5th of May 1991 in Cork", "5th of May 1991"),
    ("DATE", "DOB 23-11-84", "23-11-84"),
    ("DATE", "birth date: 11/23/1984", "11/23/1984"),
    ("NUMBER", "acct # 00481239 is mine", "00481239"),
    ("NUMBER", "transfer to account 4401 2378 9911", "4401 2378 9911"),
    ("NUMBER", "customer number: 7781203", "7781203"),
    ("NUMBER", "Member ID 908172635", "908172635"),
]

# Ordinary content that must come out unchanged: years, prices, versions, ISBNs, times, scores.
NEGATIVES: list[str] = [
    "The model reaches 95.3% accuracy on 2 benchmarks in 2019.",
    "Between 1999 2004 and 2010 prices rose by 12 345 units.",
    "Released on 2019-05-12, rated 4.5 out of 5, costs 1,299.99 dollars.",
    "e.g. the U.S. team, i.e. a dystopia; sci-fi at its best!",
    "Email is not an address; look at the dot on the map, or at home dot now.",
    "A 3-4-5 triangle, version 2.13.0, and pi is 3.14159.",
    "The match ended 2:1 at 12:30:45, then 3:2 after extra time.",
    "Population 1,234,567 in 20190512 records; ratio 16:9 screens.",
    "Use the C++ class std::vector and a::b::c namespaces.",
    "Deep Learning for Graphs, 2nd edition, pages 100-250.",
    "Café owners in Zürich love crème brûlée.",
    "ISBN 978-0-306-40615-7, paperback, 2nd printing.",
    "Found it under ISBN 0-306-40615-2 at the library.",
    "The budget grew to 12 500 000 euros in 2021.",
    "Windows build 10.0.19045.3803 fixed the bug.",
    "The meeting runs 10:30-11:45 on Tuesday.",
    "It sold 3,500,000 copies between 1998 and 2004.",
    "Chapter 12, verses 3-17, pp. 231-245.",
    "Temperatures ranged from -12.5 to 38.7 degrees.",
    "The film is 2h 15m long and scored 8.7/10 on 1,204 reviews.",
    "Rooms 101, 202 and 303 are on floors 1 to 3.",
    "Model sizes: 135M, 360M and 1.7B parameters; 2048 tokens of context.",
    "In 1969 Apollo 11 landed; 20 July 1969 is remembered by millions.",
    "Born in the USA was released in 1984 and sold 30 million copies.",
    "Commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
    "Coordinates 51.5074, -0.1278 mark central London.",
    "See RFC 7231 section 6.5.1 and ISO 8601 for details.",
    "The bill was 1 299,99 € incl. 19 % VAT.",
    "Open 09:00-17:30, Monday to Friday, closed 24-26 Dec.",
    "arXiv:2106.09685 introduced LoRA in 2021.",
    "DOI 10.1145/3292500.3330919 is the KDD paper.",
    "Flight BA 2490 departs at 07:45 from gate 23.",
    "A 1:50,000 map and a 4x4 grid of 16 tiles.",
    "Order ref GB82WEST12345698765431 is not an account.",
    "Serial XK42ABCDEFGHIJKLMN printed on the box.",
    "Tickets cost $45.00, or $120 for three, plus 7.5% tax.",
    "Scores went 21-17, 14-10 and 35-28 this season.",
    "The 2020-2021 season had 38 rounds and 380 games.",
    "Lottery numbers 4 8 15 16 23 42 came up again.",
    "Found it as ISBN 0-8044-2957-X in the catalogue.",
    "Serial DE93ABCD1234EFGH5678 on the box.",  # passes mod-97 by chance (1 code in 97), no German IBAN shape
]

NEGATIVES_2: list[str] = [
    "Call of Duty 4 sold 15 million copies in 2007.",
    "The 747-400 has a range of 13,450 km.",
    "It costs £1,250 or 3 payments of £416.67.",
    "Shot on a 50mm f/1.8 lens at 1/250 s, ISO 3200.",
    "Version 10.15.7 of macOS and iOS 14.2.",
    "The score was 102-98 after overtime.",
    "Route 66 runs 2,448 miles from Chicago to LA.",
    "Top 100 songs of 1985, ranked 1-100.",
    "ISBN-13: 9780262035613 is the Deep Learning book.",
    "A 12-month plan at 9.99 per month.",
    "Dimensions: 120 x 60 x 75 cm, weight 23.5 kg.",
    "Mix 2 cups flour, 1/2 tsp salt, bake 25-30 min at 180 °C.",
    "UTC+02:00 in summer, 14:00-16:00 local.",
    "He was born in 1990 and moved in 2005.",
    "The 1984 edition has 328 pages.",
    "Patch 1.0.2.3 fixed the crashes.",
]

# Holdout: written last, measured once, never tuned on (what misses here is a known gap, and
# tests/test_redact.py holds the scrubber to at least the measured figure).
HOLDOUT_POSITIVES: list[tuple[str, str, str]] = [
    ("EMAIL", "Questions? Email support.team@acme-industries.com or reply here.", "support.team@acme-industries.com"),
    ("EMAIL", "my email's lisa.m.brown@icloud.com btw", "lisa.m.brown@icloud.com"),
    ("EMAIL", "send CVs to jobs@société-générale.fr", "jobs@société-générale.fr"),
    ("EMAIL", "write: peter [at] gmx [dot] de", "peter [at] gmx [dot] de"),
    ("PHONE", "Call 212-555-0186 to book a table.", "212-555-0186"),
    ("PHONE", "Hotline: 0800 123 4567 (free)", "0800 123 4567"),
    ("PHONE", "WhatsApp me: +34 612 345 678", "+34 612 345 678"),
    ("PHONE", "Tel.: +43 1 234 5678", "+43 1 234 5678"),
    ("PHONE", "Phone (617) 555-0111 ext. 22", "(617) 555-0111"),
    ("PHONE", "call 0044 20 7946 0321 from Spain", "0044 20 7946 0321"),
    ("URL", "Full review on https://medium.com/@janedoe/my-review-123", "https://medium.com/@janedoe/my-review-123"),
    ("URL", "pics: instagram.com/jane.doe.travels", "instagram.com/jane.doe.travels"),
    ("HANDLE", "shoutout to @TheRealMike_ for the recs", "@TheRealMike_"),
    ("IP", "my router is 192.168.0.1, admin/admin", "192.168.0.1"),
    ("IP", "logged from 2a02:8071:2c81:a00:1c4f:2b91:8d3a:61e4 today", "2a02:8071:2c81:a00:1c4f:2b91:8d3a:61e4"),
    ("MAC", "Wi-Fi MAC 3c:22:fb:9a:01:7e", "3c:22:fb:9a:01:7e"),
    ("IBAN", "IBAN PL61 1090 1014 0000 0712 1981 2874", "PL61 1090 1014 0000 0712 1981 2874"),
    ("IBAN", "bank: NO93 8601 1117 947", "NO93 8601 1117 947"),
    ("CARD", "Paid with Visa 4000 0566 5566 5556", "4000 0566 5566 5556"),
    ("CARD", "new card 2223 0031 2200 3222 arrived", "2223 0031 2200 3222"),
    ("ID", "ssn: 312 48 9021", "312 48 9021"),
    ("ID", "N.I. number: NZ 45 67 89 D", "NZ 45 67 89 D"),
    ("DATE", "born Jan. 3, 1979 in Ohio", "Jan. 3, 1979"),
    ("DATE", "D.O.B.: 03/01/1979", "03/01/1979"),
    ("DATE", "my birthday is 14 February 1992", "14 February 1992"),
    ("DATE", "date of birth 1979-01-03", "1979-01-03"),
    ("NUMBER", "account number 20417789", "20417789"),
    ("NUMBER", "Policy No. 55-1203-7788", "55-1203-7788"),
    ("NUMBER", "client no: 102938475", "102938475"),
    ("NUMBER", "Ref: my account 7765-4432", "7765-4432"),
]

HOLDOUT_NEGATIVES: list[str] = [
    "I watched it 3 times in 2019 and twice in 2021.",
    "Battery lasts 10-12 hours; charges in 1.5 h.",
    "Ranked #3 of 1,024 entries in the 2018 Kaggle contest.",
    "The 2nd edition (2016) runs to 1,104 pages.",
    "Prices from €9.99 to €1 299.",
    "Section 4.2.1 compares 3 baselines on 5 datasets.",
    "Kickoff 20:45, doors open 19:30.",
    "We trained for 100k steps with batch size 256 and lr 3e-4.",
    "Call me Ishmael; some years ago, never mind how long.",
    "The 1080p screen runs at 144 Hz with 3 ms response.",
    "Season 2, episodes 1-10, about 45 min each.",
    "Scored 4/5 by 2,311 readers; 87% would recommend it.",
    "Model 4K-55 costs 899 dollars.",
    "EAN 4006381333931 on the label.",
    "Born in 1971, the author grew up in Leeds.",
]

# Near misses: a detector of this kind must NOT fire on them (another kind may, e.g. a long
# digit run is still a [NUMBER]). They show what the checksums cut.
LOOKALIKES: list[tuple[str, str]] = [
    ("CARD", "order 4111 1111 1111 1112 shipped"),  # Luhn fails
    ("CARD", "tracking 5555 5555 5555 4445 in transit"),  # Luhn fails
    ("IBAN", "code GB82WEST12345698765431 here"),  # mod-97 fails
    ("IBAN", "ref DE89 3704 0044 0532 0130 01 above"),  # mod-97 fails
    ("IP", "version 1.2.3.4.5 and 999.1.1.1"),
    ("ID", "case 000-12-3456 closed"),  # SSN area 000 is never issued
    ("ID", "ticket 666-12-3456 closed"),  # SSN area 666 is never issued
    ("ID", "form QQ 12 34 56 C is the NI example"),  # QQ is not an NI prefix
]

# Issue 29, item 6: what an adversarial review of the scrubber found (misses and false
# positives), verbatim in substance. Measured before any change (benchmarks/results/pii_before.json),
# then fixed on: tuned cases from then on.
ISSUE29_POSITIVES: list[tuple[str, str, str]] = [
    ("DATE", "my birthday is March 12, 1985", "March 12, 1985"),
    ("DATE", "I was born in March 1985 in Leeds", "March 1985"),
    ("DATE", "Jane Roe (b. 12/03/1985) joined in 2010", "12/03/1985"),
    ("DATE", "Je suis né le 12/03/1985 à Lyon.", "12/03/1985"),
    ("ID", "mi DNI es 12345678Z", "12345678Z"),
    ("ID", "codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S"),
    ("ID", "passport no. C01X00T47 (German specimen)", "C01X00T47"),
    ("ID", "Passport number: 533380006", "533380006"),
    ("MAC", "router MAC 001a2b3c4d5e on the sticker", "001a2b3c4d5e"),
]
ISSUE29_NEGATIVES: list[str] = [
    "Many lost their savings at the dot com bubble in 2000.",
    "We build the site with ASP.NET and C#.",
    "Use @property for read-only attributes.",
    "Log4Shell is CVE-2021-44228, patched in 2.17.",
    "In the grid spec, write the span as 1::2 here.",
]
# Variants of the same classes, written before the fix and measured once before it (same author,
# so not a blind holdout): do the fixes generalise beyond the reviewer's exact strings?
ISSUE29_VARIANT_POSITIVES: list[tuple[str, str, str]] = [
    ("DATE", "her birthday was on 3 May 1980, a Saturday", "3 May 1980"),
    ("DATE", "geboren am 03.05.1980 in Wien", "03.05.1980"),
    ("DATE", "nata il 05/06/1977 a Roma", "05/06/1977"),
    ("DATE", "nacida el 14/02/1992 en Sevilla", "14/02/1992"),
    ("DATE", "She was born in Sept. 1962.", "Sept. 1962"),
    ("ID", "NIE X1234567L en la tarjeta", "X1234567L"),
    ("ID", "DNI: 87654321-X", "87654321-X"),
    ("ID", "CF BNCGNN80A01F205W per la banca", "BNCGNN80A01F205W"),
    ("ID", "numéro de passeport 18AB12345", "18AB12345"),
    ("ID", "Reisepass-Nr. C4J7R2K91", "C4J7R2K91"),
    ("MAC", "ethernet 0C9D92A1B2C3 in the DHCP log", "0C9D92A1B2C3"),
]
ISSUE29_VARIANT_NEGATIVES: list[str] = [
    "ADO.NET and VB.NET are both older than .NET Core.",
    "Decorate it with @staticmethod or @classmethod.",
    "Heartbleed was CVE-2014-0160 in OpenSSL 1.0.1.",
    "localhost is ::1 on most systems.",
    "Fixed in commit 3f786850e387 last week.",
    "They met at the dot com party in 1999.",
]

TUNED_POSITIVES = POSITIVES + POSITIVES_2 + ISSUE29_POSITIVES
TUNED_NEGATIVES = NEGATIVES + NEGATIVES_2 + ISSUE29_NEGATIVES
ALL_POSITIVES = TUNED_POSITIVES + HOLDOUT_POSITIVES + ISSUE29_VARIANT_POSITIVES
ALL_NEGATIVES = TUNED_NEGATIVES + HOLDOUT_NEGATIVES + ISSUE29_VARIANT_NEGATIVES
KINDS: tuple[str, ...] = tuple(dict.fromkeys(k for k, _, _ in ALL_POSITIVES))

Span = tuple[int, int, str]  # (start, end, kind) in the folded text
Detector = Callable[[str], Iterable[Span]]  # folded text -> spans


def fold_keep_case(text: str) -> str:
    """:func:`~cdcda_fl.privacy.redact.fold` without the casefolding, position for position, for
    third-party recognizers whose patterns expect upper case (IBAN, NI numbers)."""
    import unicodedata

    from cdcda_fl.privacy.redact import fold

    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
        elif unicodedata.category(ch) != "Cf":
            out.append("".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)))
    cased = "".join(out)
    folded = fold(text)
    if len(cased) != len(folded):  # a character whose case folding changes its length (ß -> ss)
        return folded
    return "".join(c if c.lower() == f else f for c, f in zip(cased, folded))


def detector_fold(detect: Detector) -> Callable[[str], str]:
    """The folding ``detect`` expects (``detect.fold``: an older redact.py measured at its own
    commit brings its own); by default the shipped :func:`~cdcda_fl.privacy.redact.fold`."""
    from cdcda_fl.privacy.redact import fold

    return getattr(detect, "fold", None) or fold


def view(detect: Detector, text: str) -> str:
    """The text ``detect`` is run on: its folded text, with case kept if the detector asks (``cased``)."""
    return fold_keep_case(text) if getattr(detect, "cased", False) else detector_fold(detect)(text)


def counts_by_kind(positives: list[tuple[str, str, str]] | None = None) -> dict[str, int]:
    got = Counter(k for k, _, _ in (ALL_POSITIVES if positives is None else positives))
    return {k: got[k] for k in KINDS}


def covered(spans: Iterable[Span], start: int, end: int) -> bool:
    """Every position in [start, end) lies in some span."""
    inside = [False] * (end - start)
    for s, e, _ in spans:
        for i in range(max(s, start), min(e, end)):
            inside[i - start] = True
    return all(inside)


def _secret_at(detect: Detector, text: str, secret: str) -> tuple[int, int]:
    """Where the secret lies in the detector's folded text."""
    fold = detector_fold(detect)
    folded, fsecret = fold(text), fold(secret)
    at = folded.find(fsecret)
    if at < 0:
        raise ValueError(f"secret {secret!r} not found in folded {text!r}")
    return at, at + len(fsecret)


def caught(detect: Detector, text: str, secret: str, kind: str | None = None,
           spans: list[Span] | None = None) -> bool:
    """The whole secret would be removed by ``detect`` (run on the folded text); with ``kind``,
    only spans of that kind count (the secret becomes the right placeholder)."""
    start, end = _secret_at(detect, text, secret)
    spans = list(detect(view(detect, text))) if spans is None else spans
    return covered([s for s in spans if kind is None or s[2] == kind], start, end)


def _spans_beside(detect: Detector, text: str, secret: str, spans: list[Span]) -> int:
    """Spans of a positive sentence that do not touch its secret (false detections)."""
    start, end = _secret_at(detect, text, secret)
    return sum(1 for s, e, _ in spans if e <= start or s >= end)


def score(detect: Detector, positives: list[tuple[str, str, str]] | None = None,
          negatives: list[str] | None = None, lookalikes: list[tuple[str, str]] | None = None) -> dict:
    """Recall per kind (the secret wholly inside spans of its own kind), the share of secrets removed
    whatever the kind, span precision (spans that touch a secret / all spans, on positives and
    negatives), false positives on the negatives and same-kind hits on the lookalikes.
    Defaults: the whole battery (tuned cases and holdout)."""
    positives = ALL_POSITIVES if positives is None else positives
    negatives = ALL_NEGATIVES if negatives is None else negatives
    lookalikes = LOOKALIKES if lookalikes is None else lookalikes
    hits: Counter = Counter()
    removed = 0
    missed: list[tuple[str, str]] = []
    true_spans = false_spans = 0
    for kind, text, secret in positives:
        spans = list(detect(view(detect, text)))
        if caught(detect, text, secret, kind, spans):
            hits[kind] += 1
        else:
            missed.append((kind, text))
        removed += caught(detect, text, secret, None, spans)
        beside = _spans_beside(detect, text, secret, spans)
        true_spans += len(spans) - beside
        false_spans += beside
    total = counts_by_kind(positives)
    negative_spans = {t: len(list(detect(view(detect, t)))) for t in negatives}
    fps = [t for t, n in negative_spans.items() if n]
    false_spans += sum(negative_spans.values())
    lookalike_fps = [t for k, t in lookalikes if any(kind == k for _, _, kind in detect(view(detect, t)))]
    return {
        "recall": {k: round(hits[k] / total[k], 3) if total[k] else None for k in KINDS},
        "caught": {k: hits[k] for k in KINDS},
        "total": total,
        "recall_all": round(sum(hits.values()) / len(positives), 3),
        # span precision: spans touching a secret / all spans found (positives and negatives)
        "precision": round(true_spans / (true_spans + false_spans), 3) if true_spans + false_spans else None,
        "true_spans": true_spans,
        "false_spans": false_spans,
        "removed_any_kind": round(removed / len(positives), 3),
        "false_positives": len(fps),
        "negatives": len(negatives),
        "false_positive_texts": fps,
        "lookalike_hits": len(lookalike_fps),
        "lookalike_texts": lookalike_fps,
        "missed": missed,
    }
