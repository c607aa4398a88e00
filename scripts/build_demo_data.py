"""Writes fastalign/assets/*.jsonl: the invented "Homely Hub" help-center corpus, support SFT and preference data.

Deterministic (seeded): rerunning rewrites the same files. The JSONL files are what ships and what the tests
count on; this script only documents where they came from. Usage: python scripts/build_demo_data.py fastalign/assets
"""

import json
import random
import sys
from pathlib import Path

rng = random.Random(20261121)

PRODUCT = "Homely Hub"
APP = "Homely app"
MODELS = ["Homely Hub Mini", "Homely Hub 2", "Homely Hub Pro", "Homely Hub (1st gen)"]
DEVICES = [
    "smart plug",
    "door sensor",
    "motion sensor",
    "thermostat",
    "smart bulb",
    "water leak sensor",
    "video doorbell",
    "window blind motor",
    "smoke alarm relay",
    "garage door controller",
]
ROUTERS = ["mesh router", "ISP-provided router", "dual-band router", "travel router", "Wi-Fi extender"]
VERSIONS = ["3.2.1", "3.4.0", "3.4.2", "3.5.1", "4.0.0", "4.0.3", "4.1.2"]
ERROR_CODES = {
    "E101": "the hub cannot reach your Wi-Fi network",
    "E102": "the Wi-Fi password was rejected",
    "E204": "the firmware download was interrupted",
    "E305": "the Zigbee radio did not start",
    "E410": "the hub clock is out of sync, so the cloud refused the connection",
    "E512": "the device you tried to pair is already bound to another hub",
}
LED = {
    "solid white": "the hub is online and working normally",
    "pulsing blue": "the hub is in pairing mode and waiting for the app",
    "blinking amber": "the hub lost its internet connection and is retrying",
    "solid red": "a firmware update failed and the hub needs a restart",
    "alternating green and white": "a firmware update is being installed; do not unplug the hub",
    "off": "the hub has no power; check the USB-C cable and the power adapter",
}
PLANS = {"Basic": "free", "Plus": "$4.99 per month", "Family": "$8.99 per month", "Pro Monitoring": "$14.99 per month"}
NAMES = ["Maya", "Jonas", "Priya", "Tom", "Elena", "Kofi", "Sara", "Liam", "Aiko", "Diego", "Nora", "Omar"]
CITIES = ["Lisbon", "Toronto", "Leeds", "Austin", "Melbourne", "Dublin", "Denver", "Osaka"]

TOPICS = {
    "wifi": [
        "The {model} connects to 2.4 GHz Wi-Fi networks only, so make sure your {router} broadcasts a 2.4 GHz band.",
        "If your {router} uses one network name for both bands, temporarily split them or turn off band steering.",
        "Open the {app}, tap Add Hub, and hold the phone within two meters of the hub during setup.",
        "Wi-Fi passwords are case sensitive; the hub supports WPA2 and WPA3 in transition mode.",
        "Networks with a captive portal, like hotel or campus Wi-Fi, are not supported.",
        "When the LED is pulsing blue the hub is ready to receive the network details from the app.",
        "Move the hub away from microwaves, cordless phone bases and metal cabinets, which weaken the signal.",
        "If setup stops at 80 percent, restart the {router}, wait two minutes and try again.",
        "Hidden networks work, but you must type the network name exactly as it is configured on the router.",
        "Error {code} means {code_meaning}.",
        "After changing your router or Wi-Fi password, open Settings, Hub, Network and choose Change Wi-Fi.",
        "A signal strength below -75 dBm in the diagnostics page usually explains frequent disconnects.",
    ],
    "firmware": [
        "Firmware {version} is rolled out in stages, so it can take up to a week to reach every hub.",
        "The hub installs updates automatically between 2 and 5 a.m. local time when no automation is running.",
        "To update now, open the {app}, go to Settings, Hub, Firmware and tap Check for updates.",
        "During an update the LED shows alternating green and white; the process takes about ten minutes.",
        "Do not unplug the hub during an update; if power is lost, the hub rolls back to the previous version.",
        "Error {code} means {code_meaning}.",
        "Release notes for version {version}: faster Zigbee pairing, fewer cloud timeouts and a fix for schedules.",
        "If the update fails twice, restart the hub by unplugging it for thirty seconds and retry.",
        "You can see the installed version under Settings, Hub, About.",
        "Beta firmware is available to members of the early access program and may contain bugs.",
        "Automatic updates can be paused for up to 30 days but security fixes are always installed.",
    ],
    "reset": [
        "A restart keeps your devices and automations; a factory reset erases everything on the hub.",
        "To restart the {model}, unplug the power cable, wait thirty seconds and plug it back in.",
        "To factory reset, press and hold the reset button on the back for fifteen seconds until the LED turns red.",
        "After a factory reset the hub must be removed from your account before it can be set up again.",
        "Export a backup from Settings, Hub, Backup before resetting so that you can restore your rooms and scenes.",
        "Paired devices keep their own settings, but you will need to pair each one again after a reset.",
        "If the reset button does not respond, use a straightened paper clip and press firmly.",
        "A reset does not cancel your subscription; billing is tied to your account, not to the hub.",
        "Use a factory reset before giving the hub to someone else or returning it.",
        "If the LED stays solid red after a reset, contact support with the serial number from the bottom label.",
    ],
    "billing": [
        "The {plan} plan costs {price} and can be changed at any time from Account, Subscription.",
        "Charges appear on your statement as HOMELY*SUBSCRIPTION.",
        "When you upgrade, you pay the prorated difference for the rest of the billing period.",
        "When you downgrade, the change takes effect at the start of the next billing period.",
        "Refunds for annual plans are available within 30 days of purchase.",
        "If a payment fails, we retry three times over seven days before pausing premium features.",
        "You can update your card under Account, Payment methods; we never store the full card number.",
        "Invoices can be downloaded as PDF from Account, Billing history.",
        "Family plans cover up to six members and three homes.",
        "Cancelling keeps premium features active until the end of the period you already paid for.",
        "Sales tax is calculated from the billing address on your account.",
    ],
    "pairing": [
        "To add a {device}, open the {app}, tap the plus sign and choose the device type.",
        "Put the {device} in pairing mode, usually by holding its button until its light blinks.",
        "Zigbee devices should be within ten meters of the hub during pairing.",
        "If a {device} was used with another system, reset it first; otherwise you may see error {code}.",
        "Battery-powered devices sleep to save power, so press their button once more if pairing stalls.",
        "Mains-powered devices such as plugs act as repeaters and extend the Zigbee mesh.",
        "You can pair up to 120 devices with the {model}.",
        "After pairing, assign the {device} to a room so that voice commands can find it.",
        "If the {device} shows as unavailable, check its battery and move it closer to a powered repeater.",
        "Error {code} means {code_meaning}.",
    ],
    "automations": [
        "Automations run on the hub itself, so they keep working when the internet is down.",
        "A routine can turn on the porch light at sunset and turn it off at 11 p.m.",
        "Use the motion sensor as a trigger and add a time window so lights only turn on at night.",
        "Conditions can check whether anyone is home, based on the phones of household members.",
        "If an automation does not run, open its history to see which condition was not met.",
        "Scenes store the state of several devices and can be started from the app, a button or a voice assistant.",
        "You can pause all automations from the home screen while guests are staying over.",
        "Automations that use the weather need an internet connection to fetch the forecast.",
        "Delays of up to 24 hours can be added between the steps of a routine.",
        "The {model} runs at most 200 automations at the same time.",
    ],
    "status": [
        "When the LED is {led}, {led_meaning}.",
        "The LED brightness can be lowered under Settings, Hub, Indicator light.",
        "During setup the status light changes several times; that is expected and not a fault.",
        "Night mode turns the LED off between 10 p.m. and 7 a.m. unless there is an error.",
        "If the LED is {led} for more than an hour, restart the hub.",
        "The diagnostics page in the app shows the same status as the LED, in words.",
    ],
    "account": [
        "To invite a household member, open Settings, Members and send an invitation by email.",
        "Guests can get temporary access that expires after a number of days you choose.",
        "Two-step verification can be turned on under Account, Security.",
        "If you forgot your password, use the Reset password link on the sign-in screen.",
        "Deleting your account removes your homes, devices and history permanently after 14 days.",
        "You can download a copy of your data under Account, Privacy, Export my data.",
        "Only the home owner can remove the hub or change the subscription.",
        "Sign-in alerts are sent when your account is used on a new phone.",
    ],
}
TITLES = {
    "wifi": [
        "Connecting your {model} to Wi-Fi",
        "Wi-Fi setup troubleshooting",
        "Hub keeps going offline",
        "Changing the Wi-Fi network of your hub",
        "Router compatibility",
    ],
    "firmware": [
        "Updating the hub firmware",
        "Firmware {version} release notes",
        "Update failed: what to do",
        "How automatic updates work",
    ],
    "reset": ["Restarting or resetting your {model}", "Factory reset guide", "Before you give away your hub"],
    "billing": ["Plans and pricing", "Changing your subscription", "Refunds and cancellations", "Payment problems"],
    "pairing": ["Adding a {device}", "Zigbee pairing tips", "Device shows as unavailable"],
    "automations": ["Getting started with automations", "Why did my routine not run?", "Scenes and routines"],
    "status": ["What the hub LED means", "Status light guide"],
    "account": ["Managing household members", "Account security", "Privacy and your data"],
}
KINDS = ["article", "forum", "ticket"]


def slot_values(gen: random.Random = rng) -> dict:
    """One draw of the template slots, shared by a whole document or question/answer pair so that they agree."""
    code = gen.choice(list(ERROR_CODES))
    led = gen.choice(list(LED))
    plan = gen.choice(list(PLANS))
    return dict(
        model=gen.choice(MODELS),
        device=gen.choice(DEVICES),
        router=gen.choice(ROUTERS),
        app=APP,
        version=gen.choice(VERSIONS),
        code=code,
        code_meaning=ERROR_CODES[code],
        led=led,
        led_meaning=LED[led],
        plan=plan,
        price=PLANS[plan],
    )


# Well-known payment-processor test numbers (valid Luhn checksum, never real accounts).
TEST_CARDS = ["4111 1111 1111 1111", "5555-5555-5555-4444", "4012888888881881"]


def fake_email(name: str) -> str:
    initial, number = rng.choice(["k", "m", "r", "s"]), rng.randint(10, 99)
    domain = rng.choice(["example.com", "mail.example.org", "example.net"])
    return f"{name.lower()}.{initial}{number}@{domain}"


def fake_phone() -> str:
    return rng.choice(
        [
            f"+1 (555) 01{rng.randint(0, 9)}-{rng.randint(1000, 9999)}",
            f"555-01{rng.randint(0, 9)}-{rng.randint(1000, 9999)}",
            f"+44 20 7946 0{rng.randint(100, 999)}",
        ]
    )


def document(topic: str) -> str:
    values = slot_values()
    title = rng.choice(TITLES[topic]).format(**values)
    sentences = [sentence.format(**values) for sentence in rng.sample(TOPICS[topic], k=rng.randint(4, 6))]
    kind = rng.choice(KINDS)
    if kind == "article":
        return f"{title}\n\n" + " ".join(sentences[:3]) + "\n\n" + " ".join(sentences[3:])
    if kind == "forum":
        name = rng.choice(NAMES)
        question = f"{name} from {rng.choice(CITIES)} asked: {title.rstrip('?')}?"
        return f"{question}\n\nAccepted answer: " + " ".join(sentences)
    steps = "\n".join(f"{number}. {sentence}" for number, sentence in enumerate(sentences, 1))
    return f"Troubleshooting: {title}\n\n{steps}"


def with_pii(text: str) -> str:
    name = rng.choice(NAMES)
    contact = rng.choice(
        [
            f"Customer {name} wrote in from {fake_email(name)} and asked us to call back on {fake_phone()}.",
            f"Reply sent to {fake_email(name)}.",
            f"Contact: {name}, phone {fake_phone()}, email {fake_email(name)}.",
            f"The customer's hub reported from IP 192.168.{rng.randint(0, 9)}.{rng.randint(2, 250)} before going "
            "offline.",
            f"{name} read out the card number {rng.choice(TEST_CARDS)} on the call; never ask customers for it.",
        ]
    )
    return f"{text}\n\n{contact}"


def messy(text: str) -> str:
    """Formatting noise for the cleanup step: doubled spaces, trailing spaces, blank-line runs, a control char."""
    return text.replace(". ", ".  ", 2).replace("\n\n", "\n\n\n\n", 1) + "   \x07"


def near_duplicate(text: str) -> str:
    return text.replace("the hub", "your hub", 1) + " Thanks for reading."


def cpt_corpus(count: int, *, noisy: bool) -> list[dict]:
    topics = list(TOPICS)
    docs = [document(topics[index % len(topics)]) for index in range(count)]
    if noisy:
        for index in rng.sample(range(count), k=15):
            docs[index] = with_pii(docs[index])
        for index in rng.sample(range(count), k=10):
            docs[index] = messy(docs[index])
        docs += [docs[index] for index in rng.sample(range(count), k=6)]  # exact duplicates
        docs += [near_duplicate(docs[index]) for index in rng.sample(range(count), k=6)]
        rng.shuffle(docs)
    return [{"text": text} for text in docs]


QUESTIONS = {
    "wifi": [
        (
            "My {model} won't connect to my {router}. What should I check?",
            "The {model} only joins 2.4 GHz networks. Make sure your {router} broadcasts a 2.4 GHz band, turn off "
            "band steering during setup, keep your phone within two meters of the hub and try again from the "
            "{app}. If setup stops at 80 percent, restart the router and wait two minutes before retrying.",
        ),
        (
            "I changed my Wi-Fi password and now the hub is offline.",
            "Open the {app}, go to Settings, Hub, Network and choose Change Wi-Fi. The hub will switch to pairing "
            "mode (pulsing blue LED) and you can enter the new password. Your devices and automations are kept.",
        ),
        (
            "The app shows error {code}. What does that mean?",
            "Error {code} means {code_meaning}. Restart the hub by unplugging it for thirty seconds; if the error "
            "comes back, send us the diagnostics report from Settings, Hub, Diagnostics.",
        ),
        (
            "Can the hub use my hotel Wi-Fi?",
            "Unfortunately not. Networks with a captive portal, such as hotel or campus Wi-Fi, are not supported. "
            "A phone hotspot or a travel router works as an alternative.",
        ),
    ],
    "firmware": [
        (
            "How do I update the firmware on my {model}?",
            "Updates install automatically at night, but you can start one now: open the {app}, go to "
            "Settings, Hub, Firmware and tap Check for updates. The LED alternates green and white for about "
            "ten minutes; do not unplug the hub while it updates.",
        ),
        (
            "When will I get firmware {version}?",
            "Firmware {version} is released in stages, so it can take up to a week to reach every hub. You "
            "can check your installed version under Settings, Hub, About.",
        ),
        (
            "The update failed with error {code}.",
            "Error {code} means {code_meaning}. Restart the hub by unplugging it for thirty seconds and start "
            "the update again. If it fails twice, contact support and include your hub's serial number.",
        ),
    ],
    "reset": [
        (
            "How do I factory reset my {model}?",
            "Press and hold the reset button on the back for fifteen seconds until the LED turns red. This erases "
            "all devices and automations, so export a backup from Settings, Hub, Backup first. Then remove the "
            "hub from your account before setting it up again.",
        ),
        (
            "Will restarting the hub delete my devices?",
            "No. A restart (unplug for thirty seconds, plug back in) keeps all devices and automations. Only a "
            "factory reset erases them.",
        ),
        (
            "I'm selling my hub. What should I do first?",
            "Export a backup if you want to keep your setup, then do a factory reset by holding the reset button "
            "for fifteen seconds, and remove the hub from your account. Your subscription stays with your "
            "account, not the hub.",
        ),
    ],
    "billing": [
        (
            "How much is the {plan} plan?",
            "The {plan} plan is {price}. You can switch plans at any time under Account, Subscription; "
            "upgrades are prorated and downgrades start with the next billing period.",
        ),
        (
            "I was charged twice this month.",
            "Sorry about that. Charges appear as HOMELY*SUBSCRIPTION; please check Account, Billing history "
            "for both invoices. If you see two charges for the same period, reply with the invoice numbers and "
            "we will refund the duplicate.",
        ),
        (
            "Can I get a refund on my annual plan?",
            "Yes, annual plans can be refunded within 30 days of purchase. After that, cancelling keeps your "
            "premium features active until the end of the paid period.",
        ),
        (
            "My payment failed. Will I lose my automations?",
            "No. Automations run on the hub and are never deleted for billing reasons. We retry the payment "
            "three times over seven days; after that only premium features pause until you update your card "
            "under Account, Payment methods.",
        ),
    ],
    "pairing": [
        (
            "How do I add a {device}?",
            "Open the {app}, tap the plus sign and choose {device}. Put the {device} in pairing mode, usually by "
            "holding its button until its light blinks, and keep it within ten meters of the hub.",
        ),
        (
            "My {device} shows as unavailable.",
            "Check its battery first, then move it closer to the hub or to a mains-powered device such as a "
            "smart plug, which acts as a repeater. If it stays unavailable, remove it and pair it again.",
        ),
        (
            "Pairing my {device} fails with {code}.",
            "Error {code} means {code_meaning}. Reset the {device} to its factory settings and try pairing it "
            "again from the {app}.",
        ),
    ],
    "automations": [
        (
            "Do my automations work without internet?",
            "Yes. Automations run on the hub itself, so they keep working when the internet is down. Only "
            "steps that need online data, such as the weather forecast, will wait for the connection.",
        ),
        (
            "Why didn't my routine run last night?",
            "Open the routine and check its history: it shows which trigger fired and which condition was "
            "not met. A common cause is a time window or an 'anyone home' condition.",
        ),
        (
            "Can I turn on the porch light at sunset?",
            "Yes. Create an automation with the sunset trigger and add the porch light as the action. You "
            "can add a second step to turn it off at a fixed time.",
        ),
    ],
    "status": [
        (
            "The LED on my hub is {led}. Is something wrong?",
            "When the LED is {led}, {led_meaning}. If it stays like that for more than an hour, restart the hub.",
        )
    ],
    "account": [
        (
            "How do I give my partner access to the hub?",
            "Open Settings, Members and send an invitation by email. Members can control devices and "
            "automations; only the owner can remove the hub or change the subscription.",
        ),
        (
            "How can I delete my account?",
            "Go to Account, Privacy and choose Delete account. Your homes, devices and history are removed "
            "permanently after 14 days; you can cancel the deletion before then by signing in.",
        ),
    ],
}
OPENERS = ["", "Hi, ", "Hello! ", "Quick question: ", "Hey support, "]


CLOSERS = ["", "", " Thanks!", " I already tried restarting it.", " This is urgent.", " Thanks in advance."]


def sft_pair(gen: random.Random = rng, values: dict | None = None) -> dict:
    topic = gen.choice(list(QUESTIONS))
    question, answer = gen.choice(QUESTIONS[topic])
    values = values or slot_values(gen)
    opener = gen.choice(OPENERS)
    question = question.format(**values)
    if opener.endswith((", ", ": ")) and not question.startswith(("I ", "I'")):
        question = question[0].lower() + question[1:]
    prompt = f"Customer: {opener}{question}{gen.choice(CLOSERS)}\nAgent:"
    return {"prompt": prompt, "completion": " " + answer.format(**values)}


def unique_sft_pairs(count: int) -> list[dict]:
    pairs, seen_prompts = [], set()
    while len(pairs) < count:
        pair = sft_pair()
        if pair["prompt"] not in seen_prompts:
            seen_prompts.add(pair["prompt"])
            pairs.append(pair)
    return pairs


def messages_example() -> dict:
    first, second = sft_pair(), sft_pair()
    strip = lambda prompt: prompt.removeprefix("Customer: ").removesuffix("\nAgent:")
    turns = [{"role": "system", "content": f"You are the {PRODUCT} support assistant. Be brief and friendly."}]
    turns += [
        {"role": "user", "content": strip(first["prompt"])},
        {"role": "assistant", "content": first["completion"].strip()},
    ]
    if rng.random() < 0.6:
        turns += [
            {"role": "user", "content": strip(second["prompt"])},
            {"role": "assistant", "content": second["completion"].strip()},
        ]
    return {"messages": turns}


def instruction_example() -> dict:
    pair = sft_pair()
    question = pair["prompt"].removeprefix("Customer: ").removesuffix("\nAgent:")
    if rng.random() < 0.5:
        return {
            "instruction": f"Answer this customer question about the {PRODUCT}: {question}",
            "context": "",
            "response": pair["completion"].strip(),
        }
    topic = rng.choice(list(TOPICS))
    values = slot_values()
    facts = [sentence.format(**values) for sentence in rng.sample(TOPICS[topic], k=3)]
    return {
        "instruction": "What should the customer know first from this help-center excerpt?",
        "context": " ".join(facts),
        "response": f"The most important point: {facts[0]}",
    }


# Rejected replies for the preference data: polite, in the support agents' own words, and useless — no step that
# addresses the question. They are shorter than the real answers, so a model that merely finds short, familiar
# text likely (summed log-probs) prefers them: what alignment has to teach is "prefer the concrete answer".
GENERIC_REPLIES = [
    "Sorry to hear that. Please restart the hub and try again later.",
    "Thanks for reaching out. Please check the {app} and try again.",
    "Sorry about that. Make sure the hub is online and try again later.",
    "That can happen sometimes. Please wait a while and check the {app} again.",
    "Please contact support and we will look into your {model}.",
    "Thanks for your message. Your {device} should work normally, so please try again.",
    "Sorry for the trouble. We are looking into it; please check back later.",
    "This is expected. It usually resolves on its own after a while.",
]


def preference_pair(gen: random.Random) -> dict:
    """prompt + chosen (the concrete support answer) + rejected (a polite reply with no usable step)."""
    values = slot_values(gen)
    pair = sft_pair(gen, values)
    rejected = gen.choice(GENERIC_REPLIES).format(**values)
    return {"prompt": pair["prompt"], "chosen": pair["completion"], "rejected": " " + rejected}


def unique_preference_pairs(count: int, exclude: set[str], seed: int) -> list[dict]:
    """``count`` pairs, no prompt twice and none in ``exclude`` (the SFT prompts, so that no held-out preference
    prompt was seen in SFT). A generator of its own, so adding it left the other files unchanged."""
    pair_rng, pairs, seen = random.Random(seed), [], set(exclude)
    while len(pairs) < count:
        pair = preference_pair(pair_rng)
        if pair["prompt"] not in seen:
            seen.add(pair["prompt"])
            pairs.append(pair)
    return pairs


def write(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write(out_dir / "cpt_train.jsonl", cpt_corpus(220, noisy=True))
    write(out_dir / "cpt_eval.jsonl", cpt_corpus(40, noisy=False))
    sft = unique_sft_pairs(280)  # no prompt twice, so the held-out split shares no prompt with training
    write(out_dir / "sft_train.jsonl", sft[:240])
    write(out_dir / "sft_eval.jsonl", sft[240:])
    write(out_dir / "sft_messages.jsonl", [messages_example() for _ in range(16)])
    write(out_dir / "sft_instructions.jsonl", [instruction_example() for _ in range(16)])
    preference = unique_preference_pairs(240, exclude={pair["prompt"] for pair in sft}, seed=5)
    write(out_dir / "preference_train.jsonl", preference[:200])
    write(out_dir / "preference_eval.jsonl", preference[200:])


if __name__ == "__main__":
    main(Path(sys.argv[1]))
