use super::*;
use crate::licence::SCHEDULE;
use crate::privacy::reaper::{self, Action};

fn operator() -> Operator {
    Operator {
        name: "<script>alert(1)</script> & Söhne".into(),
        address: "Hauptstraße 1\n\n  # 3rd floor  \n12345 Musterstadt".into(),
        email: "privacy_desk@example.org".into(),
        phone: "+49 30 1234567".into(),
        dpo: "Erika Mustermann\ndpo@example.org".into(),
        authority: "Die Landesbeauftragte für Datenschutz\nBerlin".into(),
    }
}

fn section<'a>(n: &'a Notice, anchor: &str) -> &'a Section {
    fn find<'a>(sections: &'a [Section], anchor: &str) -> Option<&'a Section> {
        sections.iter().find_map(|s| (s.anchor == anchor).then_some(s).or_else(|| find(&s.subsections, anchor)))
    }
    find(&n.sections, anchor).unwrap_or_else(|| panic!("no section {anchor}"))
}

fn fact(s: &Section, index: usize) -> &str {
    match &s.blocks[..] {
        [Block::Facts(facts)] => &facts[index].1,
        other => panic!("{} is not a category section: {other:?}", s.anchor),
    }
}

const RETENTION: usize = 3;

/// Every inventory category has a title in all three languages and German and French texts,
/// an interest exactly when it rests on a legitimate interest and a `from` exactly when its
/// retention counts from something; the table has no id the inventory lacks.
#[test]
fn translations_cover_the_inventory_exactly() {
    for c in INVENTORY {
        let t = translation(c.id).unwrap_or_else(|| panic!("category {} has no translation", c.id));
        let texts = [t.data, t.purpose].into_iter().chain(t.interest).chain(t.from);
        for (what, s) in t.title.iter().copied().chain(texts.flat_map(|tr| [tr.de, tr.fr])).enumerate() {
            assert!(!s.trim().is_empty(), "category {}: text {what} is empty", c.id);
        }
        let interests = c.legal_basis.iter().filter(|b| matches!(b, LegalBasis::LegitimateInterest(_))).count();
        assert!(interests <= 1, "{}: one named interest per category is all the table holds", c.id);
        assert_eq!(t.interest.is_some(), interests == 1, "{}: interest translation", c.id);
        let has_from = matches!(c.retention, Retention::Delete { .. } | Retention::AnonymiseThenDelete { .. });
        assert_eq!(t.from.is_some(), has_from, "{}: `from` translation", c.id);
    }
    for t in TRANSLATIONS {
        assert!(super::super::category(t.id).is_some(), "translation for {}, which the inventory lacks", t.id);
    }
    for lang in Lang::ALL {
        let titles: Vec<_> = INVENTORY.iter().map(|c| title(lang, c)).collect();
        for (i, t) in titles.iter().enumerate() {
            assert!(!titles[..i].contains(t), "{}: title {t} twice", lang.code());
        }
    }
}

/// Every `stored_in` entry of the inventory is a kind of place the notice can explain.
#[test]
fn every_storage_place_is_explained() {
    for c in INVENTORY {
        for place in c.stored_in {
            for lang in Lang::ALL {
                assert_ne!(storage(lang, place, false), *place, "{}: {place} is not explained", c.id);
            }
        }
    }
}

/// Both renderings, in every language, carry every category (title, HTML anchor, data and
/// purpose) in the inventory's order, and the HTML is a complete page in that language.
#[test]
fn every_category_in_every_language_and_rendering() {
    for lang in Lang::ALL {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let (md_text, html_text) = (n.markdown(), n.html());
        let mut last = (0, 0);
        for c in INVENTORY {
            let t = title(lang, c);
            let md_at = md_text.find(&format!("### {}\n", md(t))).unwrap_or_else(|| panic!("{lang:?} md: {t}"));
            let html_at = html_text
                .find(&format!("<section id=\"category-{}\">\n<h3>{}</h3>", c.id, html(t)))
                .unwrap_or_else(|| panic!("{lang:?} html: {}", c.id));
            assert!(md_at > last.0 && html_at > last.1, "{lang:?}: {} out of inventory order", c.id);
            last = (md_at, html_at);
            assert!(html_text.contains(&format!("<a href=\"#category-{}\">", c.id)), "{lang:?}: toc {}", c.id);
            let tr = translation(c.id);
            for s in [text(lang, c.data, tr.map(|t| t.data)), text(lang, c.purpose, tr.map(|t| t.purpose))] {
                assert!(md_text.contains(&md(s)) && html_text.contains(&html(s)), "{lang:?} {}: {s}", c.id);
            }
        }
        assert!(html_text.starts_with("<!DOCTYPE html>\n"), "{lang:?}");
        assert!(html_text.contains(&format!("<html lang=\"{}\">", lang.code())), "{lang:?}");
        assert!(html_text.contains("<meta charset=\"utf-8\">") && html_text.ends_with("</html>\n"), "{lang:?}");
        assert_eq!(html_text.matches("<section").count(), html_text.matches("</section>").count(), "{lang:?}");
        assert_eq!(n.lang(), lang);
    }
}

/// The configured periods, not the defaults, are what the notice states.
#[test]
fn configured_periods_are_stated() {
    let periods = Periods {
        cdr_days: 30,
        request_log_anonymise_days: 7,
        request_log_delete_days: 45,
        audit_days: 400,
        push_days: 3,
        ..Periods::default()
    };
    let want = [
        (Lang::En, "Deleted 30 days after the end of the call.", "Deleted 400 days after the entry."),
        (
            Lang::De,
            "Wird nach 30 Tagen ab Gesprächsende gelöscht.",
            "Wird nach 400 Tagen ab Erstellung des Eintrags gelöscht.",
        ),
        (
            Lang::Fr,
            "Supprimées 30 jours après la fin de l'appel.",
            "Supprimées 400 jours après la création de l'entrée.",
        ),
    ];
    let push = [
        (Lang::En, "Deleted 3 days after the push was sent."),
        (Lang::De, "Wird nach 3 Tagen ab dem Versand der Benachrichtigung gelöscht."),
        (Lang::Fr, "Supprimées 3 jours après l'envoi de la notification."),
    ];
    for ((lang, cdr, audit), (_, push)) in want.into_iter().zip(push) {
        let n = notice(lang, &operator(), &periods, &SCHEDULE);
        assert_eq!(fact(section(&n, "category-push-records"), RETENTION), push);
        assert_eq!(fact(section(&n, "category-cdr"), RETENTION), cdr);
        assert_eq!(fact(section(&n, "category-privacy-audit"), RETENTION), audit);
        let security = fact(section(&n, "category-security-log"), RETENTION);
        let (seven, forty_five) = (days(lang, 7), days(lang, 45));
        assert!(security.contains(&seven) && security.contains(&forty_five), "{lang:?}: {security}");
        assert!(!security.contains("14") && !security.contains("90"), "{lang:?}: {security}");
        assert!(n.markdown().contains(cdr) && n.html().contains(&html(cdr)), "{lang:?}");
    }
    let n = notice(Lang::En, &Operator::default(), &Periods::default(), &SCHEDULE);
    assert_eq!(fact(section(&n, "category-cdr"), RETENTION), "Deleted 90 days after the end of the call.");
    assert_eq!(fact(section(&n, "category-push-records"), RETENTION), "Deleted 7 days after the push was sent.");
    assert_eq!(
        fact(section(&n, "category-security-log"), RETENTION),
        "Anonymised 14 days after the event (IP addresses are cut to their network part, IPv4 to /24 and IPv6 to \
         /48, and names and numbers lose their last 3 characters), and deleted 90 days after the event."
    );
    // Also in the log: not "only in memory".
    assert_eq!(fact(section(&n, "category-auth-failure"), RETENTION), "In memory for at most 1 hour.");
    assert_eq!(fact(section(&n, "category-call-in-progress"), RETENTION), "Kept only in memory, while the call lasts.");
    // The licence log holds no names: only its addresses are said to be cut.
    assert_eq!(
        fact(section(&n, "category-licence-service-log"), RETENTION),
        "Anonymised 14 days after the request (IP addresses are cut to their network part, IPv4 to /24 and IPv6 \
         to /48), and deleted 90 days after the request."
    );
    let fr = notice(Lang::Fr, &Operator::default(), &Periods::default(), &SCHEDULE).markdown();
    assert!(
        fr.contains("- **Finalité :** ")
            && fr.contains("du RGPD (exécution d'un contrat : fourniture du service téléphonique) ; art. 6")
    );
}

/// `retention_for` substitutes exactly what the reaper enforces: for every day-based rule, the
/// category's stated period for that action is the rule's.
#[test]
fn retention_for_follows_the_reaper_rules() {
    let periods = Periods {
        cdr_days: 31,
        request_log_anonymise_days: 8,
        request_log_delete_days: 46,
        audit_days: 401,
        push_days: 9,
        ..Periods::default()
    };
    let mut checked = 0;
    for rule in reaper::rules(&periods) {
        let c = super::super::category(rule.category).expect("rules name declared categories");
        let stated = match (retention_for(c, &periods), rule.action) {
            (Retention::Delete { days, .. }, Action::Delete) => days,
            (Retention::AnonymiseThenDelete { days, .. }, Action::Anonymise) => days,
            (Retention::AnonymiseThenDelete { deleted_after_days, .. }, Action::Delete) => deleted_after_days,
            (Retention::UntilExpiry, Action::Delete) => continue, // a grace after expiry, in seconds
            (r, a) => panic!("{}: {a:?} rule but the notice states {r:?}", c.id),
        };
        assert_eq!(u64::from(stated) * 86_400, rule.after.as_secs(), "{} {:?}", c.id, rule.action);
        checked += 1;
    }
    assert_eq!(checked, 6);
    let extension = super::super::category("extension").expect("declared");
    assert_eq!(retention_for(extension, &periods), extension.retention);
}

/// The operator's fields appear, each address line apart, and are escaped in both renderings.
#[test]
fn operator_fields_appear_escaped() {
    for lang in Lang::ALL {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let (md_text, html_text) = (n.markdown(), n.html());
        assert!(!html_text.contains("<script>"), "{lang:?}");
        assert!(html_text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; Söhne"), "{lang:?}");
        assert!(html_text.contains("<address>&lt;script&gt;alert(1)&lt;/script&gt; &amp; Söhne<br>\nHauptstraße 1<br>\n# 3rd floor<br>\n12345 Musterstadt<br>\n"), "{lang:?}");
        assert!(
            md_text.contains("\\<script\\>alert(1)\\</script\\> & Söhne  \nHauptstraße 1  \n\\# 3rd floor  \n"),
            "{lang:?}"
        );
        assert!(md_text.contains("privacy\\_desk@example.org") && html_text.contains("privacy_desk@example.org"));
        for s in ["+49 30 1234567", "Erika Mustermann", "dpo@example.org", "Die Landesbeauftragte für Datenschutz"] {
            assert!(md_text.contains(s) && html_text.contains(s), "{lang:?}: {s}");
        }
        // With an authority named, the complaint right points to it.
        let rights = n.html()[html_text.find("id=\"rights\"").expect("rights")..].to_string();
        assert!(rights.contains(&html(&quote(lang, section(&n, "supervisory-authority").title.as_str()))), "{lang:?}");
    }
    assert_eq!(md_line("1. Stock"), "1\\. Stock");
    assert_eq!(md_line("12) a"), "12\\) a");
    assert_eq!(md_line("- x"), "\\- x");
    assert_eq!(html("\"'"), "&quot;&#39;");
}

/// An operator without a name gets the plain "not filled in" text, in every language, and
/// nothing invented: no contact block, no authority.
#[test]
fn unconfigured_operator_is_said_plainly() {
    let said = [
        (Lang::De, "hat seine Angaben (Name und Kontaktdaten) für diese Erklärung noch nicht hinterlegt"),
        (Lang::En, "has not yet filled in its details (name and contact) for this notice"),
        (Lang::Fr, "n'a pas encore renseigné ses coordonnées (nom et contact)"),
    ];
    for (lang, text) in said {
        for name in ["", "  \n"] {
            let operator = Operator { name: name.into(), phone: "+49 30 999".into(), ..Operator::default() };
            let n = notice(lang, &operator, &Periods::default(), &SCHEDULE);
            assert!(n.markdown().contains(text) && n.html().contains(&html(text)), "{lang:?}");
            assert!(!n.html().contains("<address>") && !n.markdown().contains("+49 30 999"), "{lang:?}");
        }
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        assert!(!n.markdown().contains(text), "{lang:?}: configured operator called unconfigured");
    }
}

/// The rights name Art. 15–18, 20, 21 and 77, and the objection list is exactly the categories
/// resting on Art. 6(1)(f), each with its interest.
#[test]
fn rights_list_the_legitimate_interest_categories() {
    let lf: Vec<_> = INVENTORY
        .iter()
        .filter(|c| c.legal_basis.iter().any(|b| matches!(b, LegalBasis::LegitimateInterest(_))))
        .map(|c| c.id)
        .collect();
    assert!(lf.contains(&"cdr") && lf.contains(&"security-log") && !lf.contains(&"extension"));
    for lang in Lang::ALL {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let rights = section(&n, "rights");
        let lists: Vec<&Vec<String>> =
            rights.blocks.iter().filter_map(|b| if let Block::List(l) = b { Some(l) } else { None }).collect();
        let [_, objectable] = lists[..] else { panic!("{lang:?}: rights and objection lists expected") };
        let want: Vec<String> = lf
            .iter()
            .map(|id| {
                let c = super::super::category(id).expect("declared");
                format!("{} ({})", title(lang, c), interest(lang, c).expect("an interest"))
            })
            .collect();
        assert_eq!(objectable, &want, "{lang:?}");
        let law = lang.pick("DSGVO", "GDPR", "RGPD");
        let art = lang.pick("Art.", "Art.", "art.");
        let md_text = n.markdown();
        for a in [15, 16, 17, 18, 20, 21, 77] {
            assert!(
                md_text.contains(&format!("{art} {a} ")) || md_text.contains(&format!("{art} {a}, ")),
                "{lang:?}: Art. {a}"
            );
        }
        assert!(md_text.contains(law));
        let exercise = n.html()[n.html().find("id=\"exercising-rights\"").expect("section")..].to_string();
        assert!(exercise.contains(ERASED), "{lang:?}");
    }
}

/// What leaves the PBX: the serial and the voucher code, at the licence machines' intervals.
#[test]
fn transfers_state_the_licence_intervals() {
    let md_text = notice(Lang::En, &operator(), &Periods::default(), &SCHEDULE).markdown();
    assert!(md_text.contains("the PBX's serial number and nothing else, at start, every 24 hours, and every hour"));
    assert!(md_text.contains("the serial number and the voucher code"));
    let de = notice(Lang::De, &operator(), &Periods::default(), &SCHEDULE).markdown();
    assert!(de.contains("beim Start, alle 24 Stunden und jede Stunde"));
    let fr = notice(Lang::Fr, &operator(), &Periods::default(), &SCHEDULE).markdown();
    assert!(fr.contains("au démarrage, toutes les 24 heures et toutes les heures"));
    assert_eq!(
        (span(Lang::De, 1), span(Lang::Fr, 120), span(Lang::En, 90)),
        ("1 Sekunde".into(), "2 minutes".into(), "90 seconds".into())
    );
}

/// What leaves the PBX for push: the token and a wake-up message (never who calls), to
/// Google's FCM or Apple's APNs, whose servers may be outside the EU, with the category that
/// keeps the records named — in every language; and the push records are open to objection
/// (their troubleshooting).
#[test]
fn transfers_name_the_push_services_and_where_they_run() {
    let said = [
        (
            Lang::De,
            ["Push-Token bzw. die Geräte-ID", "Weckmeldung", "nie, wer anruft", "außerhalb der Europäischen Union"],
        ),
        (Lang::En, ["push token or device ID", "a wake-up message", "never who calls", "outside the European Union"]),
        (
            Lang::Fr,
            [
                "jeton push ou l'ID de l'appareil",
                "un message de réveil",
                "jamais qui appelle",
                "en dehors de l'Union européenne",
            ],
        ),
    ];
    let push = super::super::category("push-records").expect("declared");
    for (lang, texts) in said {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let Block::Paragraph(p) = section(&n, "transfers").blocks.last().expect("a paragraph") else {
            panic!("{lang:?}: the push paragraph ends the section")
        };
        for t in texts.iter().chain(&["Firebase Cloud Messaging (FCM)", "(APNs)", "RFC 8599"]) {
            assert!(p.contains(t), "{lang:?}: {t} not in {p}");
        }
        assert!(p.contains(&quote(lang, title(lang, push))), "{lang:?}: the records' section is named");
        assert!(n.markdown().contains(&md(p)) && n.html().contains(&html(p)), "{lang:?}");
        let rights = section(&n, "rights");
        assert!(
            rights
                .blocks
                .iter()
                .any(|b| matches!(b, Block::List(l) if l.iter().any(|i| i.starts_with(title(lang, push))))),
            "{lang:?}: push records are open to objection"
        );
    }
}

/// What reaches the operator's softphone proxy, in every language: the seed's fields and
/// periods, never the password, provisioning data deleted after forwarding, destinations' real
/// names only in debug mode, and that the operator (not the vendor) runs it under the law of
/// where its server is; each proxy category is named. The paragraph comes before the push one.
#[test]
fn transfers_say_what_reaches_the_softphone_proxy_and_where_it_runs() {
    let said = [
        (
            Lang::De,
            [
                "unabhängig von einer VPN-Anbindung",
                "aktuelle externe IP-Adresse und der Port des Softphones und der TK-Anlage",
                "das Passwort des Softphones nie",
                "nach 365 Tagen ab der letzten Nutzung gelöscht",
                "sofort nach der Weiterleitung gelöscht",
                "Klarnamen von Rufzielen",
                "nach 28 Tagen automatisch gelöscht",
                "nicht der Hersteller der Software",
                "dem Recht des Landes, in dem er sich befindet",
            ],
        ),
        (
            Lang::En,
            [
                "independently of a VPN connection",
                "the current external IP address and port of the softphone and of the PBX",
                "never the softphone's password",
                "deleted 365 days after the last use",
                "deleted immediately after forwarding",
                "real names of call destinations",
                "automatically deleted after 28 days",
                "not by the vendor of the software",
                "the law of the country in which it is located",
            ],
        ),
        (
            Lang::Fr,
            [
                "indépendamment d'une connexion VPN",
                "l'adresse IP externe actuelle et le port du softphone et du standard",
                "jamais le mot de passe du softphone",
                "supprimées 365 jours après la dernière utilisation",
                "supprimées immédiatement après leur transmission",
                "noms réels des destinations d'appel",
                "automatiquement supprimées au bout de 28 jours",
                "non par l'éditeur du logiciel",
                "au droit du pays dans lequel il se trouve",
            ],
        ),
    ];
    for (lang, texts) in said {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let transfers = section(&n, "transfers");
        let paragraphs: Vec<&String> =
            transfers.blocks.iter().filter_map(|b| if let Block::Paragraph(p) = b { Some(p) } else { None }).collect();
        let [.., proxy, _push] = paragraphs[..] else { panic!("{lang:?}: paragraphs {paragraphs:?}") };
        for t in texts.iter().chain(&["`pbx proxy`", "QUIC"]) {
            assert!(proxy.contains(t), "{lang:?}: {t} not in {proxy}");
        }
        for id in ["proxy-session", "proxy-debug", "provisioning-cache"] {
            let c = super::super::category(id).expect("declared");
            assert!(proxy.contains(&quote(lang, title(lang, c))), "{lang:?}: {id} is not named");
        }
        assert!(n.markdown().contains(&md(proxy)) && n.html().contains(&html(proxy)), "{lang:?}");
        let intro = lang.pick(
            "Softphone-Proxy des Betreibers",
            "operator's softphone proxy",
            "proxy softphone de l'exploitant",
        );
        assert!(
            matches!(&transfers.blocks[0], Block::Paragraph(p) if p.contains(intro)),
            "{lang:?}: the intro names it"
        );
    }
}

/// The proxy's categories state their periods and places: sessions 365 days after their last
/// use and debug data 28 days after the call on the proxy's database; the provisioning cache
/// only in the proxy's memory.
#[test]
fn the_proxy_categories_state_their_periods_and_places() {
    const STORED: usize = 4;
    let want = [
        (
            Lang::En,
            "Deleted 365 days after the session's last use.",
            "Deleted 28 days after the call.",
            "Kept only in memory, for at most 24 hours.",
            "only in the memory of the operator's softphone proxy, never written to disk",
            "on the operator's softphone proxy (in its database), only if softphones connect through one",
        ),
        (
            Lang::De,
            "Wird nach 365 Tagen ab der letzten Nutzung der Sitzung gelöscht.",
            "Wird nach 28 Tagen ab dem Anruf gelöscht.",
            "Wird nur im Arbeitsspeicher gehalten, höchstens 24 Stunden lang.",
            "nur im Arbeitsspeicher des Softphone-Proxys des Betreibers, nie auf einem Datenträger",
            "auf dem Softphone-Proxy des Betreibers (in seiner Datenbank), nur wenn Softphones sich über einen solchen verbinden",
        ),
        (
            Lang::Fr,
            "Supprimées 365 jours après la dernière utilisation de la session.",
            "Supprimées 28 jours après l'appel.",
            "Conservées uniquement en mémoire, 24 heures au plus.",
            "uniquement dans la mémoire vive du proxy softphone de l'exploitant, jamais sur disque",
            "sur le proxy softphone de l'exploitant (dans sa base de données), uniquement si des softphones s'y connectent",
        ),
    ];
    for (lang, session, debug, provisioning, memory, database) in want {
        let n = notice(lang, &operator(), &Periods::default(), &SCHEDULE);
        let (s, d, p) = (
            section(&n, "category-proxy-session"),
            section(&n, "category-proxy-debug"),
            section(&n, "category-provisioning-cache"),
        );
        assert_eq!((fact(s, RETENTION), fact(d, RETENTION), fact(p, RETENTION)), (session, debug, provisioning));
        assert_eq!((fact(s, STORED), fact(d, STORED), fact(p, STORED)), (database, database, memory));
    }
}

/// Accept-Language: weights, subtags, case, the wildcard, refusals (q=0), malformed weights.
#[test]
fn negotiate_picks_by_weight() {
    let cases = [
        (None, Lang::En),
        (Some(""), Lang::En),
        (Some("de-DE,de;q=0.9,en;q=0.8"), Lang::De),
        (Some("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5"), Lang::Fr),
        (Some("en;q=0.5, de;q=0.9"), Lang::De),
        (Some("DE"), Lang::De),
        (Some("es, it"), Lang::En),
        (Some("es, fr;q=0.1"), Lang::Fr),
        (Some("de;q=0"), Lang::En),
        (Some("de;q=0, fr;q=0.001"), Lang::Fr),
        (Some("*"), Lang::En),
        (Some("de;q=0.5, *;q=0.8"), Lang::En),
        (Some("en;q=0, *"), Lang::De),
        (Some("de;q=0.5, fr;q=0.5"), Lang::De),
        (Some("fr;q=0.5, de;q=0.5"), Lang::Fr),
        (Some("de;q=1.5, fr;q=0.2"), Lang::Fr),
        (Some("de;q=abc, fr"), Lang::Fr),
        (Some("de ; Q=1.000"), Lang::De),
        (Some("fr_FR"), Lang::Fr),
        (Some(";;,,=;q="), Lang::En),
    ];
    for (header, want) in cases {
        assert_eq!(negotiate(header), want, "{header:?}");
    }
    let long = format!("{}fr", "es,".repeat(LANGUAGE_RANGES_MAX));
    assert_eq!(negotiate(Some(&long)), Lang::En, "ranges beyond the bound are not read");
}

/// `--lang` takes de, en and fr in any case and refuses the rest, naming what it accepts.
#[test]
fn lang_parses_or_names_the_choices() {
    for lang in Lang::ALL {
        assert_eq!(lang.code().parse::<Lang>(), Ok(lang));
        assert_eq!(lang.code().to_uppercase().parse::<Lang>(), Ok(lang));
    }
    assert_eq!("Fr".parse::<Lang>(), Ok(Lang::Fr));
    for bad in ["", "de-DE", "german", "e", " en", "es"] {
        let err = bad.parse::<Lang>().expect_err(bad);
        assert!(err.contains("de, en or fr"), "{bad:?}: {err}");
    }
}
