"""Generate ``support_tickets.jsonl``: 360 customer-support tickets for a fictional smart-home company.

Nimbus sells devices (hubs, cameras, locks), a subscription cloud service and an API, so all four
queues (billing, technical, shipping, account) come up naturally. Every ticket comes from a
handwritten template plus slot fillers; nothing is downloaded and no model writes text, so the
file is reproducible byte for byte: ``python examples/data/generate_tickets.py`` rewrites it, and
``--check`` only compares. The JSONL is checked in; this script stays for provenance.

Template syntax: ``{slot}`` takes a filler (``{slot2}`` a different one than ``{slot}``) and
``[a|b|c]`` picks one alternative. A template starting in lower case is a terse ticket and never
gets a greeting or a signature. Stdlib only, so it runs without the package installed.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
OUTPUT = Path(__file__).with_name("support_tickets.jsonl")

QUEUES = ("billing", "technical", "shipping", "account")
# 360 tickets: technical 32%, billing 28%, shipping 22%, account 18%.
QUEUE_COUNTS = {"technical": 115, "billing": 101, "shipping": 79, "account": 65}
# Per queue: train / val / test. Chosen by hand so every split carries the same mix and the
# split totals come out at exactly 200 / 60 / 100.
SPLIT_COUNTS = {
    "technical": {"train": 64, "val": 19, "test": 32},
    "billing": {"train": 56, "val": 17, "test": 28},
    "shipping": {"train": 44, "val": 13, "test": 22},
    "account": {"train": 36, "val": 11, "test": 18},
}
SPLITS = ("train", "val", "test")
AMBIGUOUS_SHARE = 0.125
MAX_CHARS = 299


@dataclass(frozen=True)
class Template:
    text: str
    urgency: int  # 0 low, 1 normal, 2 high: how pressing the situation reads before tier and wording
    business: bool = False  # written from a company's point of view, so drawn mostly from pro/enterprise
    ambiguous: bool = False  # mentions another queue's vocabulary; the label stays defensible


def t(text: str, urgency: int = 1, business: bool = False) -> Template:
    return Template(text, urgency, business)


def amb(text: str, urgency: int = 1, business: bool = False) -> Template:
    return Template(text, urgency, business, ambiguous=True)


TEMPLATES: dict[str, list[Template]] = {
    "billing": [
        t("I was charged twice for order {order}, {amount} each time. Please refund one of them."),
        t("Why is my card still being charged {amount} every month? I cancelled my {plan} plan on {date}."),
        t(
            "Can I get an invoice with our company VAT number on it? [Our accountant needs it|We need it for "
            "the books] by {weekday}.",
            0,
            business=True,
        ),
        t("hi, refund for {order} still not on my card after {days} days. whats going on", 1),
        t(
            "I'd like to switch from monthly to annual billing on the {plan} plan. Would the unused "
            "part of this month be credited?",
            0,
        ),
        t("You charged me {amount} for a plan I never signed up for. I want my money back [NOW|TODAY].", 2),
        t(
            "Invoice {invoice} shows {amount} but the quote we signed said {amount2}. Could you send a "
            "corrected invoice?",
            1,
            business=True,
        ),
        t(
            "My payment keeps getting declined even though the card ending {cardend} works everywhere else. "
            "Can you check on your side?"
        ),
        t(
            "Could you tell me when the next billing date is for my {plan} subscription? [Thank you|Thanks]!",
            0,
        ),
        t(
            "I was promised {percent}% off when I upgraded to {plan}, but the full price of {amount} was "
            "taken from my card.",
        ),
        t(
            "The price of the {plan} plan went {hike} a month without any notice. "
            "[Not happy about this.|Pretty disappointed tbh.]",
        ),
        t("Please update the billing address on our invoices to {street}, {city}.", 0, business=True),
        t(
            "charged {amount} the day my free trial ended, i thought you would remind me first. can i get a "
            "refund?",
        ),
        t(
            "We need to pay the {plan} plan by bank transfer instead of card. Is that possible, and who do we "
            "send the remittance to?",
            0,
            business=True,
        ),
        t("There's a charge of {amount} from Nimbus on {date} that I don't recognise. What is it for?"),
        t(
            "Please refund the {amount} renewal from {date}. I forgot to cancel and haven't used the service "
            "since {month}.",
        ),
        t(
            "Our finance team needs copies of every invoice from {month} onward for the audit. Where can we "
            "download them?",
            0,
            business=True,
        ),
        t("The sales tax on my last bill looks wrong, {taxline} subscription?"),
        t(
            "How much would it cost to add Cloud Video to my {plan} plan? I'd like to know before I'm "
            "billed anything.",
            0,
        ),
        t("I downgraded to {plan} on {date} but was still billed the old price of {amount}. Please fix."),
        t(
            "My PayPal was charged {amount} three times today! Please reverse the extra payments "
            "[immediately|right away].",
            2,
        ),
        t("Is there a student or nonprofit discount for the {plan} subscription?", 0),
        t(
            "Can you explain the prorated charge of {amount} on my {month} invoice? I only added one camera.",
            0,
        ),
        t("i want to cancel my subscripton and get a refund for this month pls", 1),
        t(
            "Your billing is a joke. {amount} taken on {date} and nobody answers my emails. Refund it "
            "[or I'm disputing it with my bank|today].",
            2,
        ),
        t("Could you confirm whether the {amount} charge on {date} was the annual renewal or the add-on?", 0),
        t(
            "Got a 'payment failed' notice but my bank says the {amount} went through. Please check before "
            "you suspend our service!",
            2,
        ),
        t(
            "We'd like to move from the {plan} plan to annual invoicing with a purchase order. Who handles "
            "that?",
            0,
            business=True,
        ),
        t(
            "Coupon code SPRING{nn} didn't apply at checkout and I paid full price, {amount}. Can you refund "
            "the differnce?",
        ),
        t("what is this {amount} charge?? i never upgraded anything", 1),
        t(
            "Our card on file expires this month. How do I replace it before the {plan} renewal on {date} "
            "so the payment doesn't fail?",
            0,
        ),
        t("Requesting a refund of {amount} for {month}, the service was down for most of that week.", 1),
        # Ambiguous. Each label below is what a support lead would pick after reading the whole ticket.
        # The return reached the warehouse; the missing money is the problem, not the parcel.
        amb(
            "I returned the {product} on {date} and the courier shows it was delivered to you, but the "
            "{amount} refund still hasn't reached my card."
        ),
        # "app" and "button", but nothing is broken: an unwanted charge needs reversing.
        amb(
            "I tapped Cloud Video in the app by accident and got charged {amount} straight away. Please "
            "reverse the charge, I don't want it.",
        ),
        # "email" and "accounts" belong to the billing contact here, not to a profile.
        amb(
            "Please send our invoices to the accounts payable team at {email} from now on, not to me.",
            0,
            business=True,
        ),
        # "account" as in the bank account; the duplicate charge is the issue.
        amb("My account was charged {amount} twice for the same order {order}. Please refund the duplicate."),
        # The order never shipped, so the only open question is the charge.
        amb(
            "Order {order} was cancelled before it shipped, yet the {amount} charge is still on my statement."
        ),
        # The checkout error is over; the customer wants the second payment back.
        amb(
            "The checkout page errored out, I tried again and now I've been charged {amount} twice. Please "
            "refund the extra payment.",
        ),
        # Seats are account admin, but the complaint is the amount on the invoice.
        amb(
            "We removed {seats} users from our workspace in {month} but invoice {invoice} still bills us for "
            "all of them.",
            1,
            business=True,
        ),
        # Deleting the account worked; being charged afterwards is a billing problem.
        amb(
            "I deleted my account on {date} but you still charged my card {amount} this month. Refund please."
        ),
    ],
    "technical": [
        t("The Nimbus app crashes as soon as I open the Devices tab on my {device}."),
        t("Getting {error} every time I try to save a schedule in the web dashboard."),
        t(
            "Since updating to version {version} my {product} keeps going offline every few hours. I've "
            "already restarted the router. Any ideas?",
        ),
        t("app wont load on {os}, just a white screen", 1),
        t(
            "Our {integration} integration stopped receiving events on {date}. Nothing changed on our end.",
            2,
            business=True,
        ),
        t(
            "The API returns {error} on {endpoint} for about a third of requests. This is breaking our "
            "production sync!",
            2,
            business=True,
        ),
        t(
            "The dashboard takes over {secs} seconds to load the history page in {browser}. It used to be instant."
        ),
        t(
            "Push notifications stopped working after the last update, I [don't get motion alerts|get no "
            "doorbell alerts] anymore.",
        ),
        t("When I export my energy report to CSV the file is empty. [Tried twice.|Same in {browser}.]", 0),
        t(
            "The {product} firmware update has been stuck at {pct}% for an hour. Is it safe to unplug it?",
            2,
        ),
        t("The live view keeps buffering and then shows {error}. My internet is fine, other apps work.", 1),
        t(
            "Is there a way to set up the {product} with {integration}? The integration doesn't find any "
            "devices.",
            0,
        ),
        t("Bug: dark mode makes the temperature graph unreadable, the labels are black on black.", 0),
        t(
            "Our webhooks have been firing twice for every event since {date}, which duplicates records in "
            "our system.",
            1,
            business=True,
        ),
        t(
            "The {product} won't pair over Bluetooth. It blinks blue, the app says 'device not found' and "
            "then nothing happens.",
        ),
        t(
            "Everything is DOWN. None of our {seats} cameras show in the dashboard and the status page says "
            "all green??",
            2,
            business=True,
        ),
        t(
            "We get rate limited (429) by the API at way fewer than the documented 100 requests per minute.",
            1,
            business=True,
        ),
        t("The app drains my phone battery, about {pct}% overnight, since version {version}.", 0),
        t(
            "Automations randomly don't trigger. The 7am lights routine worked on {weekday} but not {weekday2}, "
            "and no error is shown.",
        ),
        t("The Windows desktop app freezes when I open more than two camera feeds at once."),
        t("Clicking 'Download recording' in {browser} gives a broken 0 KB file.", 1),
        t("sdk throws a NullPointerException in DeviceClient.connect() on {os}, stack trace below", 1),
        t(
            "The graphs for my {product} show times an hour off since the clocks changed. Small thing, but "
            "a bit confusing.",
            0,
        ),
        t(
            "Voice commands through {assistant} say the {product} is unresponsive, but it works fine from "
            "the app.",
        ),
        t(
            "Your API docs say {endpoint} supports pagination but the cursor parameter is ignored.",
            0,
            business=True,
        ),
        t(
            "After the {version} update the app crashes on launch. Reinstalled twice, same thing. Please "
            "fix this, I can't turn off my heating!",
            2,
        ),
        t("The map on the Locations screen is just grey tiles, nothing loads on my {device}.", 0),
        t("Motion zones I draw in the app don't save, they reset as soon as I close the screen."),
        t(
            "My {product} shows 'offline' in the app but the light on it is solid green and it responds to "
            "the button.",
        ),
        t("the {product} keeps disconecting from wifi every night around 2am. router is 3m away", 1),
        t(
            "Recordings from the {cam} have no sound since {date}, the microphone is enabled in settings.",
        ),
        t("{error} when I open the website on {browser}. Cleared cache, still broken.", 1),
        # Ambiguous. Each label below is what a support lead would pick after reading the whole ticket.
        # Payment words, but the page itself is broken: nothing has been charged yet.
        amb(
            "The payment page throws {error} when I click Pay, so I can't renew my subscription at all.",
            2,
        ),
        # Tracking and order words, but every order shows the same blank page: an app bug.
        amb(
            "The tracking link in the app opens a blank page for every order, while the same link in the "
            "email works fine.",
            0,
        ),
        # A password page, but the report is a script error in one browser, not a lost password.
        amb(
            "The password reset form on your website throws a JavaScript error in {browser} and the submit "
            "button does nothing. Works in another browser.",
        ),
        # SSO is login, but the SAML integration itself fails after a release.
        amb(
            "Our Okta SSO integration started returning {error} after your release on {date}. The SAML "
            "response fails to validate.",
            2,
            business=True,
        ),
        # The invoice is fine; the download in the dashboard is broken.
        amb("The invoice PDF download in the billing section of the dashboard gives {error}.", 0),
        # Shipping address field, but the bug is a frozen web page.
        amb("The shipping address autocomplete at checkout freezes the whole page in {browser}.", 1),
        # Sign-in happens, then the app drops the session: a client bug, not a credentials problem.
        amb(
            "Since version {version} the app logs me out every time I switch to another app, so I have to "
            "sign in again constantly.",
        ),
        # "account" and "session" words; the dashboard misbehaves for an active user.
        amb(
            "I keep getting 'Session expired' popups every few minutes in the dashboard even while I'm "
            "actively using my account.",
        ),
    ],
    "shipping": [
        t("Where is my order {order}? It was supposed to arrive on {date}."),
        t("Tracking for {order} hasn't updated in {days} days, it's just stuck at '{status}'."),
        t("My {product} arrived with a cracked casing and the box was completely crushed. What do I do now?"),
        t("hi can i change the delivery address for {order}, im moving to {city} next week", 1),
        t(
            "{carrier} says the parcel was delivered but there's nothing at my door or with the neighbours.",
            2,
        ),
        t("Order {order} came with the wrong item, I ordered a {product} and got a {product2}."),
        t("Do you ship to {country}, and roughly how long does delivery take?", 0),
        t("I only received one of the three items in order {order}. Was the rest shipped separately?"),
        t("Can you hold my package at the {carrier} depot? I'm away until {date}.", 0),
        t("It's been three weeks. THREE WEEKS. Where is order {order}?!", 2),
        t("How do I send back the {product}? It's unopened and I'd like to return it.", 0),
        t("The return label you sent for {order} won't scan at the {carrier} drop-off point.", 1),
        t("The package for {order} was left out in the rain and the {product} inside is soaked."),
        t("Is express delivery available for the {product}? I need it by {date}.", 0),
        t("The courier tried to deliver on {date} while I was at work. Can I pick a different day?", 0),
        t("My order {order} shows as delivered in {city} but I live in {city2}!", 2),
        t(
            "I entered the wrong apartment number for order {order}, it should be {apt}. Hopefully it's not "
            "too late to fix!",
        ),
        t("The {product} was missing its power adapter when it arrived.", 0),
        t("Please cancel the shipment of {order}, I ordered the same thing twice by mistake."),
        t("order {order} arrived dented, box ripped open. not impressed", 1),
        t(
            "Could you tell me which carrier is handling order {order}? The tracking number doesn't work on "
            "the {carrier} site.",
        ),
        t("Delivery for {order} is marked as 'exception' with no details. What does that mean?"),
        t("I need the {product} as a gift on {date}, will order {order} make it in time?"),
        t("Ordered on {date} and it still hasn't even shipped. Your site said dispatch within 24 hours."),
        t("The driver left my parcel with a neighbour I've never met. Can you find out which adress?"),
        t(
            "My return for {order} has been sitting at the {carrier} depot for {days} days. Can you check "
            "it's on its way back to you?",
            0,
        ),
        t("I'd like to exchange the {product} for the white version. How do I ship the old one back?", 0),
        t(
            "The package for {order} went to my old address in {city}. Please help, it's an expensive item.",
            2,
        ),
        t("Is it possible to combine orders {order} and {order2} into one delivery?", 0),
        t("my parcel {order} says 'held at customs' for {days} days now, who do i contact", 1),
        t(
            "We ordered {headcount} {product} units for our new office and only half the boxes arrived. The "
            "delivery note says one pallet.",
            1,
            business=True,
        ),
        # Ambiguous. Each label below is what a support lead would pick after reading the whole ticket.
        # "Refund" is one possible remedy; the issue is a parcel damaged in transit.
        amb(
            "My {product} arrived smashed in the box. I want a refund or a replacement sent out [asap|today]."
        ),
        # The account page is only where they looked; the parcel never arrived.
        amb("My account page says order {order} was delivered on {date}, but I never got it."),
        # Mentions a payment, but the question is where the late parcel is.
        amb(
            "Paid {amount} extra for express shipping on {order} and it's now a week late with no tracking "
            "updates. Where is it?",
        ),
        # The app only shows the status; the parcel looks lost.
        amb("The app has said my {product} is 'out for delivery' since {date}. Is it lost?"),
        # Fees at the border are a customs / carrier matter, not a charge by the shop.
        amb(
            "Customs is asking me to pay {amount} in import fees before they release {order}. I thought "
            "duties were included in shipping?",
        ),
        # Email changed on the profile, but the ask is the tracking link for the order.
        amb(
            "I changed the email on my profile and the tracking updates for {order} still go to my old "
            "address. Can you resend the tracking link?",
            0,
        ),
        # The refund comes later; the return parcel itself is stuck.
        amb(
            "I returned the {product} two weeks ago for a refund, but tracking shows it never left the post "
            "office. Can you look into it?",
        ),
    ],
    "account": [
        t("I can't log in, it says my password is wrong but I [just reset it|reset it an hour ago]."),
        t("How do I change the email address on my account to {email}?", 0),
        t(
            "Please delete my account and all the data you hold about me. [This is a GDPR request.|Confirm by email please.]",
            1,
        ),
        t("The 2FA codes from my authenticator app aren't accepted anymore. I'm locked out!", 2),
        t(
            "Can you add {seats} more seats to our workspace? We're onboarding new staff on {date}.",
            1,
            business=True,
        ),
        t("lost my phone with the authenticator on it, how do i get back into my account", 2),
        t("How do I give my partner access to our home's cameras without sharing my password?", 0),
        t("Password reset email never arrives. Checked spam, [twice|nothing there].", 1),
        t("Someone changed my account email without my permission! I think I've been hacked.", 2),
        t(
            "Our admin left the company. How do we transfer ownership of the workspace to me?",
            1,
            business=True,
        ),
        t("Please change the name on my profile from {name} to {name2}.", 0),
        t("I'd like a copy of all the personal data you store about me, as per GDPR.", 0),
        t(
            "Can I merge my two accounts? I accidentaly signed up with {email} and again with my work "
            "address.",
            0,
        ),
        t("My account got locked after too many login attempts. How long until I can try again?"),
        t("How do I turn on two-factor authentication for everyone in our organisation?", 0, business=True),
        t(
            "I need to remove a former employee's access [immediately|today], they still have admin rights.",
            2,
            business=True,
        ),
        t("My username still shows my old company name, can that be updated?", 0),
        t("I never created this account, please close it. I keep getting emails from you.", 1),
        t(
            "The verification link says 'expired' every time I click it, so I can't confirm my new account.",
        ),
        t("Can I change the phone number used for SMS codes? I have a new number since {month}.", 1),
        t("whats the max number of users on the {plan} plan? need to add 2 more people", 0),
        t(
            "My daughter set up the account with her email and now she's moved out. Could we switch the "
            "login to mine, {email}?",
            0,
        ),
        t("Forgot my password AND I no longer have access to the email on file. What are my options?"),
        t("Please make {name} an admin on our workspace, they're our new IT lead.", 0, business=True),
        t("Is it possible to deactivate my account for a few months instead of deleting it?", 0),
        t("Got a 'new sign-in from {city}' alert and that wasn't me. Please lock my account now!", 2),
        t(
            "Our workspace lists {headcount} users but only about half of them still work here. Can you remove "
            "the ones who haven't logged in since {month}?",
            0,
            business=True,
        ),
        t("cant sign in with google anymore, says no account linked to {email}", 1),
        t("How do I stop {name} from seeing the front door camera? They should only see the garage.", 0),
        # Ambiguous. Each label below is what a support lead would pick after reading the whole ticket.
        # A billing question in passing; what they want is the account gone.
        amb(
            "I want to close my account for good. Does deleting it also stop the subscription, or do I "
            "cancel that first?",
            0,
        ),
        # "Billing" is just one of the views; the question is about roles.
        amb(
            "New team member {name} can see billing but not the cameras. What permission do they need?",
            0,
            business=True,
        ),
        # Orders are mentioned, but the problem is signing in.
        amb(
            "I can't sign in, it says there's no account for {email}, but I've placed orders with you "
            "using that address.",
        ),
        # Receipts and order emails are the reason for the change; the ask is a profile email change.
        amb(
            "Please update the email on my account to {email}. All my order confirmations and receipts go "
            "to an address I no longer use.",
            0,
        ),
        # Invoices are what she needs to see; the ask is which role to grant.
        amb(
            "Our finance person needs to download invoices but shouldn't manage devices. Which role should "
            "I give her?",
            0,
            business=True,
        ),
        # "Since the update" sounds like a bug, but every 2FA lockout goes to account recovery first.
        amb("Since {date} I get 'invalid 2FA code' every time, even with fresh codes, so I can't log in.", 2),
        # Card and address live on the profile; this is a personal-data request.
        amb("Please remove my old credit card and home address from my profile, I want that data gone.", 0),
        # Fewer seats changes the bill, but the request is to deactivate named users.
        amb(
            "We're dropping [two|2] seats, please deactivate {name} and {name2} and move their cameras to "
            "my login.",
            1,
            business=True,
        ),
    ],
}

# fmt: off
# Tables kept dense on purpose: one line per kind of filler is easier to review than one per value.
GREETINGS = ("Hi,", "Hello,", "Hi team,", "Hey there,", "Dear Nimbus Support,", "Good morning,", "Hi support,")
SIGNOFFS = (
    "Thanks, {name}",
    "Thank you, {name}",
    "Regards, {name}",
    "Best, {name}",
    "- {name}",
    "Cheers, {name}",
    "Thanks in advance!",
    "Kind regards, {name}",
)

FILLERS: dict[str, tuple[str, ...]] = {
    "amount": (
        "$9.99", "$12.00", "$14.99", "$19.99", "$24.50", "$39.99", "$49.99", "$59.88", "$79.00",
        "$99.00", "$119.88", "$129.99", "$149.00", "$199.99", "$249.00", "$499.00",
    ),
    "plan": ("Starter", "Plus", "Pro", "Team", "Business"),
    "product": (
        "Nimbus Hub", "Nimbus Hub Mini", "Indoor Cam", "Outdoor Cam Pro", "Video Doorbell", "Thermostat",
        "Smart Lock", "smart plug 4-pack", "Motion Sensor", "Light Strip", "Chime",
    ),
    "cam": ("Indoor Cam", "Outdoor Cam Pro", "Video Doorbell"),
    "carrier": ("UPS", "FedEx", "DHL", "USPS", "Royal Mail", "Canada Post"),
    "city": ("Denver", "Leeds", "Toronto", "Austin", "Lyon", "Portland", "Dublin", "Phoenix", "Madison", "Bristol"),
    "country": ("Canada", "Ireland", "Norway", "Australia", "Mexico", "Switzerland", "Japan", "Portugal"),
    "device": ("iPhone 12", "iPhone 15", "Pixel 7", "Galaxy S23", "iPad Air", "OnePlus 11", "Moto G"),
    "os": ("iOS 17.4", "Android 14", "Android 13", "iPadOS 17", "Android 12"),
    "browser": ("Chrome", "Firefox", "Safari", "Edge"),
    "version": ("4.2.1", "4.3.0", "4.3.2", "5.0", "5.0.1"),
    "error": (
        "error 500", "a 502 Bad Gateway", "error code E-1042", "ERR_CONNECTION_RESET",
        "'Something went wrong (code 7)'", "a 403 Forbidden", "'Unexpected error NX-203'",
    ),
    "integration": ("Alexa", "Google Home", "Apple HomeKit", "IFTTT", "Home Assistant", "Zapier", "SmartThings"),
    "endpoint": ("/v2/devices", "/v2/events", "/v2/recordings", "/v1/auth/token", "/v2/automations"),
    "status": ("Label created", "In transit", "Arrived at facility", "Out for delivery", "Processing at hub"),
    "name": (
        "Maria", "Dan", "Priya", "Tom", "Aisha", "Jonas", "Chen", "Sofia", "Kevin", "Fatima", "Luis",
        "Hannah", "Marco", "Grace", "Olu", "Beth", "Ravi", "Nora",
    ),
    "email": (
        "maria.k@example.com", "dan.ortega@example.org", "priya.s@example.net", "t.walsh@example.com",
        "aisha.b@example.org", "jonas.h@example.com", "chen.li@example.net", "sofia.r@example.com",
    ),
    "month": (
        "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
        "November", "December",
    ),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "days": ("3", "4", "5", "6", "8", "10", "12", "five", "ten"),
    "percent": ("10", "15", "20", "25", "30"),
    "pct": ("23", "37", "40", "55", "62", "80", "91"),
    "secs": ("20", "30", "45", "60"),
    "headcount": ("12", "18", "24", "30", "40", "60"),
    "assistant": ("Alexa", "Google Assistant", "Siri"),
    "seats": ("3", "4", "5", "8", "12", "15", "20", "25", "40"),
    "apt": ("4B", "12", "3C", "207", "9A", "15"),
    "street": ("221 Pine Street", "14 Harbor Road", "9 Elm Court", "480 Market Ave", "3 Mill Lane"),
}

# fmt: on

_MONTH_ABBR = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SLOT = re.compile(r"\{([a-z]+)(2?)\}")
_CHOICE = re.compile(r"\[([^\[\]]*)\]")
_PROPER = {"Nimbus", "Okta", "Alexa", "Google", "Apple", "Zapier", "Royal", "Canada"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Wording that makes an agent triage a ticket up, whatever the template's base urgency.
_URGENT = re.compile(
    r"\b(urgent|asap|immediately|right away|today|hacked|locked out|down)\b|(?-i:\bNOW\b)|now!|!{2,}|\?!",
    re.I,
)


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _dynamic(slot: str, rng: random.Random) -> str | None:
    """Fillers drawn from a range rather than a list, so order numbers and dates rarely repeat."""
    if slot == "order":
        return f"#{rng.randint(10_000, 99_999)}"
    if slot == "invoice":
        return f"INV-{rng.choice((2023, 2024))}-{rng.randint(100, 9999):04d}"
    if slot == "cardend":
        return f"{rng.randint(0, 9999):04d}"
    if slot == "nn":
        return f"{rng.randint(10, 30)}"
    if slot == "hike":
        # A price rise has to go up, and by a plausible step.
        low = rng.randrange(len(FILLERS["amount"]) - 2)
        return f"from {FILLERS['amount'][low]} to {FILLERS['amount'][low + rng.randint(1, 2)]}"
    if slot == "taxline":
        # Tax that is plainly too high for the base price, which is what the customer is querying.
        base = float(rng.choice(FILLERS["amount"])[1:])
        return f"${base * rng.choice((0.25, 0.3, 0.35)):.2f} of tax on a ${base:.2f}"
    if slot == "date":
        month, day = rng.randint(1, 12), rng.randint(1, 28)
        style = rng.randrange(4)
        if style == 0:
            return f"{_MONTH_ABBR[month - 1]} {day}"
        if style == 1:
            return f"{FILLERS['month'][month - 1]} {_ordinal(day)}"
        if style == 2:
            return f"{month}/{day}"
        return f"the {_ordinal(day)}"
    return None


def _fill(template: str, rng: random.Random) -> str:
    text = _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)
    chosen: dict[str, str] = {}

    def pick(match: re.Match[str]) -> str:
        slot, second = match.group(1), match.group(2)
        key = slot + second
        if key not in chosen:
            while True:
                value = _dynamic(slot, rng) or rng.choice(FILLERS[slot])
                # "{x2}" must differ from "{x}" (a wrong item, a second city), so redraw on a clash.
                if not second or value != chosen.get(slot):
                    break
            chosen[key] = value
        return chosen[key]

    # Fill "{x}" before "{x2}" wherever they appear, so the clash check sees the first value.
    for match in sorted(_SLOT.finditer(text), key=lambda m: m.group(2)):
        pick(match)
    return _SLOT.sub(pick, text)


def _sentences(text: str) -> int:
    return len([part for part in _SENTENCE_END.split(text.strip()) if part])


def _decorate(body: str, template: Template, rng: random.Random) -> str:
    """Greetings and sign-offs on some tickets, as real inboxes have; terse ones stay bare."""
    if body[0].islower() or body.startswith(GREETINGS):
        return body
    text = body
    if rng.random() < 0.3:
        first, _, rest = body.partition(" ")
        # "Hi, the app ..." reads like a person; "Hi, The app ..." reads like a template. Names stay.
        if re.fullmatch(r"[A-Z][a-z]+('[a-z]+)?", first) and first not in _PROPER:
            first = first.lower()
        text = f"{rng.choice(GREETINGS)} {first} {rest}"
    # A signature would clash with a person already named in the ticket ("make Dan an admin - Dan").
    if rng.random() < 0.25 and "{name" not in template.text:
        text = f"{text} {_fill(rng.choice(SIGNOFFS), rng)}"
    return text if len(text) <= MAX_CHARS else body


def _tier(template: Template, rng: random.Random) -> str:
    if template.business:
        return rng.choices(("free", "pro", "enterprise"), (0.1, 0.45, 0.45))[0]
    return rng.choices(("free", "pro", "enterprise"), (0.5, 0.35, 0.15))[0]


def _priority(template: Template, tier: str, text: str, rng: random.Random) -> str:
    # Loosely tied on purpose: urgency of the situation, plus tier (SLA), plus pushy wording, plus noise.
    score = template.urgency + {"free": -0.35, "pro": 0.0, "enterprise": 0.45}[tier]
    score += 0.5 if _URGENT.search(text) else 0.0
    score += rng.uniform(-0.45, 0.45)
    return "low" if score < 0.3 else "normal" if score < 1.55 else "high"


def _allocate(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Largest-remainder split of ``total`` over ``weights`` (deterministic tie-break by split order)."""
    whole = sum(weights.values())
    exact = {key: total * w / whole for key, w in weights.items()}
    counts = {key: int(value) for key, value in exact.items()}
    order = sorted(weights, key=lambda key: (-(exact[key] - counts[key]), SPLITS.index(key)))
    for key in order[: total - sum(counts.values())]:
        counts[key] += 1
    return counts


def _draw(
    queue: str, templates: list[Template], count: int, rng: random.Random, seen: set[str]
) -> list[dict]:
    """``count`` tickets cycling through ``templates`` in shuffled rounds, so every template is used evenly."""
    drawn: list[dict] = []
    pool: list[Template] = []
    misses = 0
    while len(drawn) < count:
        if not pool:
            pool = templates[:]
            rng.shuffle(pool)
        template = pool.pop()
        body = _fill(template.text, rng)
        key = re.sub(r"\W+", " ", body.lower()).strip()
        if key in seen:
            misses += 1
            if misses > 1000:
                raise RuntimeError(f"{queue}: templates too narrow to give {count} distinct tickets")
            continue
        seen.add(key)
        if re.search(r"[{}\[\]]", body):
            raise ValueError(f"unfilled slot or choice in {template.text!r}")
        if _sentences(body) > 3 or len(body) > MAX_CHARS:
            raise ValueError(f"template too long (>3 sentences or >{MAX_CHARS} chars): {template.text!r}")
        tier = _tier(template, rng)
        text = _decorate(body, template, rng)
        drawn.append(
            {
                "text": text,
                "queue": queue,
                "priority": _priority(template, tier, text, rng),
                "customer_tier": tier,
                "ambiguous": template.ambiguous,
            }
        )
    return drawn


def build_tickets(seed: int = SEED) -> list[dict]:
    """All 360 tickets, ids assigned after a global shuffle so the id says nothing about queue or split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    tickets: list[dict] = []
    for queue in QUEUES:
        total = QUEUE_COUNTS[queue]
        n_ambiguous = round(total * AMBIGUOUS_SHARE)
        ambiguous = [tpl for tpl in TEMPLATES[queue] if tpl.ambiguous]
        plain = [tpl for tpl in TEMPLATES[queue] if not tpl.ambiguous]
        hard = _draw(queue, ambiguous, n_ambiguous, rng, seen)
        easy = _draw(queue, plain, total - n_ambiguous, rng, seen)
        # Stratify twice: by queue (the fixed counts) and, inside it, ambiguous vs plain.
        targets = SPLIT_COUNTS[queue]
        hard_counts = _allocate(len(hard), targets)
        easy_counts = {split: targets[split] - hard_counts[split] for split in SPLITS}
        for group, counts in ((hard, hard_counts), (easy, easy_counts)):
            labels = [split for split in SPLITS for _ in range(counts[split])]
            rng.shuffle(labels)
            for ticket, split in zip(group, labels, strict=True):
                ticket["split"] = split
        tickets += hard + easy
    rng.shuffle(tickets)
    return [
        {
            "ticket_id": f"T-{i:04d}",
            "text": ticket["text"],
            "queue": ticket["queue"],
            "priority": ticket["priority"],
            "customer_tier": ticket["customer_tier"],
            "split": ticket["split"],
            "_ambiguous": ticket["ambiguous"],
        }
        for i, ticket in enumerate(tickets, start=1)
    ]


def render_jsonl(tickets: list[dict]) -> str:
    """The file contents; the private ``_ambiguous`` marker stays out of the published data."""
    lines = [json.dumps({k: v for k, v in ticket.items() if not k.startswith("_")}) for ticket in tickets]
    return "\n".join(lines) + "\n"


def _summary(tickets: list[dict]) -> str:
    rows = []
    for split in (None, *SPLITS):
        subset = [tk for tk in tickets if split is None or tk["split"] == split]
        mix = " ".join(f"{q}={sum(tk['queue'] == q for tk in subset) / len(subset):.1%}" for q in QUEUES)
        hard = sum(tk["_ambiguous"] for tk in subset)
        rows.append(f"{split or 'all':>5} n={len(subset):3d} {mix} ambiguous={hard}")
    priorities = {p: sum(tk["priority"] == p for tk in tickets) for p in ("low", "normal", "high")}
    tiers = {p: sum(tk["customer_tier"] == p for tk in tickets) for p in ("free", "pro", "enterprise")}
    rows.append(f"priority {priorities}  tier {tiers}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the checked-in file, write nothing"
    )
    args = parser.parse_args(argv)
    tickets = build_tickets()
    content = render_jsonl(tickets)
    if args.check:
        same = OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == content
        print("up to date" if same else f"{OUTPUT} differs from the generator output")
        return 0 if same else 1
    OUTPUT.write_text(content, encoding="utf-8")
    print(f"wrote {len(tickets)} tickets to {OUTPUT}\n{_summary(tickets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
