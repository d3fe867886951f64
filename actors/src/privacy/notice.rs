//! The privacy notice an operator publishes (GDPR Art. 13/14), generated from [`INVENTORY`] in
//! German, English and French, so that notice and code cannot drift apart.
//!
//! Its structure follows the vendor policy in `shared/seed/`: general information, controller,
//! data protection officer, supervisory authority, then one section per data category (what,
//! why, legal basis, retention with the configured periods, where, whose), what leaves the
//! PBX, and the data subjects' rights. One structured [`Notice`] is built and rendered twice:
//! Markdown for the CLI, a small HTML page for `GET /privacy`. All text is escaped in both, so
//! an operator's strings can never become markup.
//!
//! The inventory's texts are English; [`TRANSLATIONS`] holds the German and French ones per
//! category, and a test fails if a category lacks one. Pure: no clock, no I/O.
//!
//! Not done here: legal advice. The operator remains responsible for what it publishes (other
//! processing it does outside pbx, its own retention of log output).

use super::reaper::Periods;
use super::{DataCategory, ERASED, INVENTORY, LegalBasis, MASKED_TAIL, Retention, SubjectKind};
use std::fmt::Write as _;
use std::str::FromStr;

/// A language the notice is written in (declared in the order of [`Lang::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    De,
    En,
    Fr,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::De, Lang::En, Lang::Fr];

    /// The ISO 639-1 code, as `--lang` and `<html lang>` take it.
    pub fn code(self) -> &'static str {
        self.pick("de", "en", "fr")
    }

    /// Between the items of a run-in list; French sets a space before `;` and `:`.
    fn semicolon(self) -> &'static str {
        self.pick("; ", "; ", " ; ")
    }

    fn colon(self) -> &'static str {
        self.pick(":", ":", " :")
    }

    fn pick<T>(self, de: T, en: T, fr: T) -> T {
        match self {
            Lang::De => de,
            Lang::En => en,
            Lang::Fr => fr,
        }
    }
}

impl FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Lang, String> {
        Lang::ALL
            .into_iter()
            .find(|l| s.eq_ignore_ascii_case(l.code()))
            .ok_or_else(|| format!("{s:?} is not a language of the privacy notice; use de, en or fr"))
    }
}

/// Language ranges of an Accept-Language header looked at, at most; the rest is ignored.
pub const LANGUAGE_RANGES_MAX: usize = 32;

/// The notice language for an HTTP `Accept-Language` header (RFC 9110 §12.5.4): the range with
/// the highest weight whose primary subtag is one of ours (`de-DE` is German); `*` stands for
/// the languages not named; earlier ranges win ties. English when nothing matches or the header
/// is absent. Ranges with a malformed weight are ignored.
pub fn negotiate(accept_language: Option<&str>) -> Lang {
    // (weight in thousandths, position in the header, language)
    let mut best: Option<(u16, usize, Lang)> = None;
    let mut consider = |q: u16, pos: usize, lang: Lang| {
        if q > 0 && best.is_none_or(|(bq, bpos, _)| q > bq || (q == bq && pos < bpos)) {
            best = Some((q, pos, lang));
        }
    };
    let mut named = [false; 3];
    let mut wildcard = None;
    for (pos, range) in accept_language.unwrap_or("").split(',').take(LANGUAGE_RANGES_MAX).enumerate() {
        let mut parts = range.split(';');
        let tag = parts.next().unwrap_or("").trim();
        let Some(q) = weight(parts) else { continue };
        if tag == "*" {
            wildcard = Some((q, pos));
            continue;
        }
        let primary = tag.split(['-', '_']).next().unwrap_or("");
        if let Some(lang) = Lang::ALL.into_iter().find(|l| primary.eq_ignore_ascii_case(l.code())) {
            named[lang as usize] = true;
            consider(q, pos, lang);
        }
    }
    if let Some((q, pos)) = wildcard {
        // English first: it is the default when the client takes anything.
        for lang in [Lang::En, Lang::De, Lang::Fr] {
            if !named[lang as usize] {
                consider(q, pos, lang);
            }
        }
    }
    best.map_or(Lang::En, |(_, _, lang)| lang)
}

/// The `q` parameter in thousandths (1000 when absent); `None` if it is malformed.
fn weight<'a>(params: impl Iterator<Item = &'a str>) -> Option<u16> {
    let mut q = 1000;
    for param in params {
        let Some((key, value)) = param.split_once('=') else { continue };
        if !key.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let value = value.trim();
        let (int, frac) = value.split_once('.').unwrap_or((value, ""));
        if !matches!(int, "0" | "1") || frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac: u16 = format!("{frac:0<3}").parse().ok()?;
        q = if int == "1" { if frac == 0 { 1000 } else { return None } } else { frac };
    }
    Some(q)
}

/// Who runs the PBX, as the notice names them. An empty `name` means the operator has not
/// filled in its details: the notice says so rather than inventing any.
#[derive(Clone, Debug, Default)]
pub struct Operator {
    pub name: String,
    /// May span several lines.
    pub address: String,
    pub email: String,
    pub phone: String,
    /// The data protection officer's contact; empty: none appointed.
    pub dpo: String,
    /// The competent supervisory authority; empty: not stated.
    pub authority: String,
}

/// A category's retention with this node's configured periods in place of the defaults: the
/// notice states what the reaper enforces here.
pub fn retention_for(category: &DataCategory, periods: &Periods) -> Retention {
    match (category.id, category.retention) {
        ("cdr" | "conference-participation", Retention::Delete { from, config, .. }) => {
            Retention::Delete { days: periods.cdr_days, from, config }
        }
        ("privacy-audit", Retention::Delete { from, config, .. }) => {
            Retention::Delete { days: periods.audit_days, from, config }
        }
        ("push-records", Retention::Delete { from, config, .. }) => {
            Retention::Delete { days: periods.push_days, from, config }
        }
        ("security-log", Retention::AnonymiseThenDelete { from, config, .. }) => Retention::AnonymiseThenDelete {
            days: periods.request_log_anonymise_days,
            deleted_after_days: periods.request_log_delete_days,
            from,
            config,
        },
        (_, retention) => retention,
    }
}

/// A text in German and French; the English is the inventory's own.
#[derive(Clone, Copy, Debug)]
struct Tr {
    de: &'static str,
    fr: &'static str,
}

/// The German and French of one category's inventory texts, and its title in all three.
#[derive(Clone, Copy, Debug)]
struct Translation {
    id: &'static str,
    title: [&'static str; 3],
    data: Tr,
    purpose: Tr,
    /// The named interest of its Art. 6(1)(f) basis, if it has one.
    interest: Option<Tr>,
    /// The `from` of its retention, if it has one: German after "ab", French after "après".
    from: Option<Tr>,
}

/// One row per [`INVENTORY`] category (titles: de, en, fr). A test keeps the two in step.
const TRANSLATIONS: &[Translation] = &[
    Translation {
        id: "extension",
        title: ["Nebenstellen", "Extensions", "Postes internes"],
        data: Tr {
            de: "Nebenstellennummer, Anzeigename, Digest-Hashwerte H(Benutzer:Realm:Passwort) für MD5 und SHA-256 (niemals das Passwort selbst); ihre Rufumleitung: die Nebenstellen, zu denen ihre Anrufe gehen (immer, bei besetzt, bei Nichtmelden) und nach wie vielen Sekunden; die Rufgruppen, bei denen sie abgemeldet ist",
            fr: "numéro de poste, nom affiché, empreintes digest H(utilisateur:domaine:mot de passe) pour MD5 et SHA-256 (jamais le mot de passe lui-même) ; son renvoi d'appel : les postes vers lesquels vont ses appels (toujours, sur occupation, sur non-réponse) et après combien de secondes ; les groupes d'appel dont il s'est déconnecté",
        },
        purpose: Tr {
            de: "Authentifizierung der Telefone der Nebenstelle, Anzeige ihres Namens und Weiterleitung ihrer Anrufe, wie ihr Benutzer es wünscht",
            fr: "authentifier les téléphones du poste, afficher son nom et acheminer ses appels comme son utilisateur l'a demandé",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "registration",
        title: ["Anmeldungen von Telefonen", "Phone registrations", "Enregistrements des téléphones"],
        data: Tr {
            de: "Nebenstellennummer, Kontakt-URI (IP-Adresse und Port), Absenderadresse, Transportprotokoll, Call-ID, CSeq, User-Agent",
            fr: "numéro de poste, URI de contact (adresse IP et port), adresse source, protocole de transport, Call-ID, CSeq, agent utilisateur (User-Agent)",
        },
        purpose: Tr {
            de: "Zustellung von Anrufen an die Telefone, an denen die Nebenstelle angemeldet ist",
            fr: "acheminer les appels vers les téléphones sur lesquels le poste est enregistré",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "auth-failure",
        title: ["Fehlgeschlagene Anmeldeversuche", "Failed authentications", "Échecs d'authentification"],
        data: Tr {
            de: "Quell-IP-Adresse (bei IPv6 ihr /64-Präfix) und angegebener Benutzername fehlgeschlagener Authentifizierungen, solange die Quelle oder der Benutzer beobachtet oder gesperrt wird; IP-Adresse und Port, von denen sich jede Nebenstelle zuletzt angemeldet hat, damit Sperren ihre Telefone verschonen",
            fr: "adresse IP source (en IPv6, son préfixe /64) et nom d'utilisateur indiqué lors des authentifications échouées, tant que la source ou l'utilisateur est surveillé ou bloqué ; adresse IP et port depuis lesquels chaque poste s'est authentifié en dernier, pour que les blocages épargnent ses téléphones",
        },
        purpose: Tr {
            de: "Abwehr von Angriffen, die Passwörter zu erraten versuchen (Sicherheit des Dienstes)",
            fr: "bloquer les tentatives visant à deviner les mots de passe (sécurité du service)",
        },
        interest: Some(Tr {
            de: "Sicherheit des Dienstes, Art. 32 DSGVO", fr: "sécurité du service, art. 32 du RGPD"
        }),
        from: None,
    },
    Translation {
        id: "security-log",
        title: ["Sicherheitsprotokoll", "Security log", "Journal de sécurité"],
        data: Tr {
            de: "Zeitpunkt, Quell-IP-Adresse und angegebener Benutzername jeder fehlgeschlagenen Authentifizierung und jeder Sperre; bei einer Flut ein Eintrag je Minute, Ereignisart und Netz (/24, /64) mit deren Anzahl",
            fr: "date et heure, adresse IP source et nom d'utilisateur indiqué de chaque authentification échouée et de chaque blocage ; en cas d'afflux, une entrée par minute, type d'événement et réseau (/24, /64) avec leur nombre",
        },
        purpose: Tr {
            de: "nachträgliche Untersuchung von Angriffen auf die TK-Anlage (das Anfrageprotokoll der TK-Anlage)",
            fr: "enquêter a posteriori sur les attaques contre le standard (le journal des requêtes du standard)",
        },
        interest: Some(Tr {
            de: "Sicherheit des Dienstes, Art. 32 DSGVO", fr: "sécurité du service, art. 32 du RGPD"
        }),
        from: Some(Tr { de: "dem Ereignis", fr: "l'événement" }),
    },
    Translation {
        id: "cdr",
        title: ["Verbindungsdaten", "Call detail records", "Relevés détaillés des appels"],
        data: Tr {
            de: "Nebenstellennummern von Anrufer und Angerufenem (beim Angerufenen: die gewählte Nummer), Zeitpunkt von Beginn, Annahme und Ende des Gesprächs, Ergebnis, wer aufgelegt hat, SIP-Call-ID, Codecs, Medienstatistiken (Pakete, Bytes, Verluste, Jitter); bei einem weitervermittelten Gespräch, wer es an welche Nummer weitervermittelt hat, und die Verknüpfung seiner Datensätze",
            fr: "numéros de poste de l'appelant et de l'appelé (pour l'appelé : le numéro composé), heures de début, de prise et de fin de l'appel, résultat, partie ayant raccroché, Call-ID SIP, codecs, statistiques média (paquets, octets, pertes, gigue) ; pour un appel transféré, qui l'a transféré vers quel numéro et le lien entre ses relevés",
        },
        purpose: Tr {
            de: "Abrechnung und die Anrufliste, die Nutzer einsehen (Vertrag); Fehlersuche und Anrufstatistik (berechtigtes Interesse)",
            fr: "facturation et historique des appels consultable par les utilisateurs (contrat) ; dépannage et statistiques d'appels (intérêt légitime)",
        },
        interest: Some(Tr {
            de: "Fehlersuche im Dienst und Anrufstatistik",
            fr: "dépannage du service et statistiques d'appels",
        }),
        from: Some(Tr { de: "Gesprächsende", fr: "la fin de l'appel" }),
    },
    Translation {
        id: "conference-participation",
        title: ["Konferenzteilnahmen", "Conference participations", "Participations aux conférences"],
        data: Tr {
            de: "Nummer des Konferenzraums, die Nebenstelle des Teilnehmers, wann sein Anruf den Raum erreichte, wann er (nach der PIN) eintrat und wann er ihn verließ; nie der Ton (Räume zeichnen nichts auf)",
            fr: "numéro de la salle de conférence, le poste du participant, quand son appel a atteint la salle, quand il y est entré (après le code PIN) et quand il l'a quittée ; jamais le son (les salles n'enregistrent rien)",
        },
        purpose: Tr {
            de: "Verlauf einer Konferenz (wer teilnahm und wann) für Abrechnung und die Anrufliste der Nutzer, wie bei den Verbindungsdaten",
            fr: "historique d'une conférence (qui y a participé et quand) pour la facturation et l'historique des appels des utilisateurs, comme pour les relevés détaillés des appels",
        },
        interest: None,
        from: Some(Tr { de: "dem Verlassen des Raums", fr: "la sortie de la salle" }),
    },
    Translation {
        id: "push-records",
        title: ["Push-Benachrichtigungen", "Push notifications", "Notifications push"],
        data: Tr {
            de: "für jede Push-Benachrichtigung, die ein mobiles Softphone weckt (für einen Anruf oder damit es seine Anmeldung vor deren Ablauf erneuert): Zeitpunkt, der Benutzername des geweckten Telefons (die Nebenstelle des Angerufenen), die Rufnummern des Anrufenden und des Angerufenen (bei einer Erneuerung kein Anrufender), der Push-Dienst (FCM oder APNs), das Push-Token bzw. die Geräte-ID, mit der sich die App angemeldet hat, IP-Adresse und Port der App bei ihrer letzten Anmeldung und das Ergebnis (zugestellt, Token nicht mehr gültig, fehlgeschlagen); für den Versand gehen das Token und eine Weckmeldung an den Push-Dienst von Google bzw. Apple (siehe „Datenübermittlung nach außen“)",
            fr: "pour chaque notification push envoyée pour réveiller un softphone mobile (pour un appel, ou pour qu'il renouvelle son enregistrement avant son expiration) : date et heure, le nom d'utilisateur du téléphone réveillé (le poste de l'appelé), les numéros de téléphone de l'appelant et de l'appelé (pas d'appelant pour un renouvellement), le service push (FCM ou APNs), le jeton push ou l'ID de l'appareil avec lequel l'application s'est enregistrée, l'adresse IP et le port de l'application lors de son dernier enregistrement, et le résultat (remise, jeton plus valable, échec) ; pour l'envoi, le jeton et un message de réveil sont transmis au service push de Google ou d'Apple (voir « Données transmises à l'extérieur »)",
        },
        purpose: Tr {
            de: "Wecken der mobilen App des Angerufenen über ihren Push-Dienst, damit sie den Anruf annehmen oder ihre Anmeldung erneuern und erreichbar bleiben kann (Vertrag); die Aufzeichnung jeder Push-Benachrichtigung wird ausschließlich zum Zweck der Fehlersuche und Qualitätsoptimierung gespeichert (berechtigtes Interesse)",
            fr: "réveiller l'application mobile de l'appelé via son service push pour qu'elle puisse prendre l'appel, ou renouveler son enregistrement pour rester joignable (contrat) ; l'enregistrement de chaque notification est conservé dans le seul but de dépanner et d'optimiser la qualité (intérêt légitime)",
        },
        interest: Some(Tr {
            de: "Fehlersuche bei Push-Benachrichtigungen und Qualitätsoptimierung des Dienstes",
            fr: "dépannage des notifications push et optimisation de la qualité du service",
        }),
        from: Some(Tr { de: "dem Versand der Benachrichtigung", fr: "l'envoi de la notification" }),
    },
    Translation {
        id: "call-in-progress",
        title: ["Laufende Gespräche", "Calls in progress", "Appels en cours"],
        data: Tr {
            de: "Rufnummern und Anzeigenamen von Anrufer und Angerufenem, SIP-Dialogkennungen (Call-ID, Tags, Kontakt-URIs mit IP-Adressen und Ports), SDP-Medienadressen, die beobachteten RTP-Quelladressen; die Sprache selbst wird nur weitergeleitet, nie gespeichert",
            fr: "numéros et noms affichés de l'appelant et de l'appelé, identifiants de dialogue SIP (Call-ID, tags, URI de contact avec adresses IP et ports), adresses média SDP, adresses source RTP observées ; la voix elle-même est seulement relayée, jamais enregistrée",
        },
        purpose: Tr {
            de: "Aufbau des Gesprächs und Übertragung von Sprache und Medien",
            fr: "établir l'appel et acheminer la voix et les médias",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "privacy-preferences",
        title: ["Einschränkungen und Widersprüche", "Restrictions and objections", "Limitations et oppositions"],
        data: Tr {
            de: "die Nebenstelle oder Rufnummer, die eine Einschränkung der Verarbeitung verlangt (Art. 18 DSGVO) oder der Statistik widersprochen hat (Art. 21 DSGVO), und seit wann",
            fr: "le poste ou le numéro qui a demandé la limitation du traitement (art. 18 du RGPD) ou s'est opposé aux statistiques (art. 21 du RGPD), et depuis quand",
        },
        purpose: Tr {
            de: "Beachtung der Einschränkung oder des Widerspruchs",
            fr: "respecter la limitation ou l'opposition",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "privacy-audit",
        title: ["Datenschutz-Protokoll", "Privacy audit log", "Journal d'audit de la protection des données"],
        data: Tr {
            de: "jeder Lauf der Löschregeln (Regel, Anzahl der Datensätze, Stichtag) und jede Anfrage betroffener Personen (Recht, Zeitpunkt, berührte Datensätze, die betroffene Person als schlüsselbasiertes Pseudonym: HMAC-SHA-256 mit dem Datenschutzschlüssel der TK-Anlage, niemals die Rufnummer oder Adresse selbst)",
            fr: "chaque exécution des règles de conservation (règle, nombre d'enregistrements, date limite) et chaque demande d'une personne concernée (droit exercé, date et heure, enregistrements concernés, la personne sous forme de pseudonyme à clé : HMAC-SHA-256 avec la clé de confidentialité du standard, jamais le numéro ou l'adresse eux-mêmes)",
        },
        purpose: Tr {
            de: "Nachweis, dass Speicherfristen und Anfragen betroffener Personen eingehalten wurden (Rechenschaftspflicht)",
            fr: "prouver que les durées de conservation et les demandes des personnes concernées ont été respectées (principe de responsabilité)",
        },
        interest: None,
        from: Some(Tr { de: "Erstellung des Eintrags", fr: "la création de l'entrée" }),
    },
    Translation {
        id: "erasure-tombstone",
        title: ["Löschvermerke", "Erasure tombstones", "Marques d'effacement"],
        data: Tr {
            de: "für jede gelöschte Nebenstelle oder Rufnummer ihr schlüsselbasiertes Pseudonym (HMAC-SHA-256 mit dem Datenschutzschlüssel der TK-Anlage, niemals die Rufnummer selbst) und der Zeitpunkt der Löschung",
            fr: "pour chaque poste ou numéro effacé, son pseudonyme à clé (HMAC-SHA-256 avec la clé de confidentialité du standard, jamais le numéro lui-même) et la date de l'effacement",
        },
        purpose: Tr {
            de: "eine Löschung wirksam halten: ein Eintrag der Konfigurationsdatei, der eine gelöschte Rufnummer nennt, wird nicht erneut angewendet",
            fr: "maintenir l'effacement : une entrée du fichier de configuration qui nomme un numéro effacé n'est plus appliquée",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "cluster-log",
        title: ["Replikationsprotokoll", "Replication log", "Journal de réplication"],
        data: Tr {
            de: "die dauerhaften Änderungen an den obigen Kategorien (Nebenstellen, Anmeldungen, Verbindungsdaten, Konferenzteilnahmen, Push-Benachrichtigungen, Lizenzdokumente, Anfragen betroffener Personen mit der genannten Person), wie sie zwischen den Knoten repliziert werden, und ein Abbild davon",
            fr: "les modifications durables des catégories ci-dessus (postes, enregistrements, données d'appel, participations aux conférences, notifications push, documents de licence, demandes des personnes concernées avec la personne nommée), telles qu'elles sont répliquées entre les nœuds, et un instantané de celles-ci",
        },
        purpose: Tr {
            de: "alle Knoten der TK-Anlage (bei einer Appliance: den einen) übereinstimmend halten und nach einem Absturz wiederherstellen",
            fr: "maintenir la cohérence de tous les nœuds du standard (un seul sur une appliance) et les rétablir après une panne",
        },
        interest: None,
        from: None,
    },
    Translation {
        id: "licence-service-log",
        title: ["Protokoll des Lizenzdienstes", "Licence service log", "Journal du service de licences"],
        data: Tr {
            de: "anfragende IP-Adresse, Zeitpunkt, die abgefragte Seriennummer, die Anfrage (Lizenz, Freischaltungen, Einlösung eines Vouchers mit einem schlüsselbasierten Hash des Vouchercodes, nie dem Code selbst) und ihr Ergebnis; zur Begrenzung fehlgeschlagener Einlösungen, nur im Arbeitsspeicher, das Netz (IPv4-Adresse, IPv6-/64) einer Quelle, deren Einlösung fehlschlug, standardmäßig höchstens 10 Minuten nach ihrem letzten Fehlschlag",
            fr: "adresse IP à l'origine de la requête, date et heure, numéro de série demandé, la requête (licence, déverrouillages, échange d'un voucher avec un hachage à clé de son code, jamais le code lui-même) et son résultat ; pour limiter les échanges échoués, uniquement en mémoire, le réseau (adresse IPv4, /64 IPv6) d'une source dont l'échange a échoué, au plus 10 minutes après son dernier échec par défaut",
        },
        purpose: Tr {
            de: "Betrieb des Lizenz- und Voucherdienstes; Erkennen von Missbrauch (Erraten von Seriennummern oder Vouchern)",
            fr: "exploiter le service de licences et de vouchers ; détecter les abus (tentatives de deviner des numéros de série ou des vouchers)",
        },
        interest: Some(Tr {
            de: "Betrieb und Absicherung des Lizenzdienstes",
            fr: "exploitation et sécurisation du service de licences",
        }),
        from: Some(Tr { de: "der Anfrage", fr: "la requête" }),
    },
    Translation {
        id: "proxy-session",
        title: ["Sitzungen über den Softphone-Proxy", "Softphone proxy sessions", "Sessions via le proxy softphone"],
        data: Tr {
            de: "für jedes Softphone, das die TK-Anlage über den Softphone-Proxy des Betreibers (`pbx proxy`) erreicht: aktuelle externe IP-Adresse und Port des Softphones, externe IP-Adresse und Port der TK-Anlage, die Seriennummer der TK-Anlage, der Benutzername des Softphones, ggf. das Push-Token, mit dem es sich angemeldet hat, und der Zeitpunkt seiner letzten Nutzung; niemals sein Passwort (der Proxy leitet nur die Anfrage der TK-Anlage und die Antwort des Softphones darauf weiter)",
            fr: "pour chaque softphone qui atteint le standard via le proxy softphone de l'exploitant (`pbx proxy`) : l'adresse IP externe actuelle et le port du softphone, l'adresse IP externe et le port du standard, le numéro de série du standard, le nom d'utilisateur du softphone, le cas échéant le jeton push avec lequel il s'est enregistré, et la date de sa dernière utilisation ; jamais son mot de passe (le proxy ne fait que relayer le défi du standard et la réponse du softphone)",
        },
        purpose: Tr {
            de: "Anbindung von Softphones an die TK-Anlage unabhängig von einer VPN-Anbindung und ihre Erreichbarkeit für eingehende Anrufe",
            fr: "connecter les softphones au standard indépendamment d'une connexion VPN, et les joindre à nouveau pour les appels entrants",
        },
        interest: None,
        from: Some(Tr { de: "der letzten Nutzung der Sitzung", fr: "la dernière utilisation de la session" }),
    },
    Translation {
        id: "proxy-debug",
        title: [
            "Fehlersuche im Softphone-Proxy",
            "Softphone proxy debug data",
            "Données de débogage du proxy softphone",
        ],
        data: Tr {
            de: "nur solange der Administrator der TK-Anlage für sie den Debug-Modus eingeschaltet hat (er endet von selbst, standardmäßig nach 4 Wochen): die Klarnamen von Rufzielen (die gewählte Nummer und der Anzeigename, unter dem sie angerufen wurde), mit dem Benutzernamen des anrufenden Softphones, der Seriennummer der TK-Anlage und dem Zeitpunkt",
            fr: "uniquement tant que l'administrateur du standard a activé le mode de débogage pour celui-ci (il prend fin de lui-même, par défaut au bout de 4 semaines) : les noms réels des destinations d'appel (le numéro appelé et le nom affiché sous lequel il a été appelé), avec le nom d'utilisateur du softphone appelant, le numéro de série du standard et la date et l'heure",
        },
        purpose: Tr {
            de: "Fehlersuche bei Gesprächen über den Softphone-Proxy, auf Wunsch des Administrators der TK-Anlage",
            fr: "dépanner les appels passant par le proxy softphone, à la demande de l'administrateur du standard",
        },
        interest: Some(Tr {
            de: "Fehlersuche bei Gesprächen über den Softphone-Proxy",
            fr: "dépannage des appels passant par le proxy softphone",
        }),
        from: Some(Tr { de: "dem Anruf", fr: "l'appel" }),
    },
    Translation {
        id: "provisioning-cache",
        title: [
            "Provisionierung von Softphones",
            "Softphone provisioning cache",
            "Cache de provisionnement des softphones",
        ],
        data: Tr {
            de: "die Konfiguration eines Softphones, wie die TK-Anlage sie dem Softphone-Proxy zum Abruf durch das Softphone übergibt: der Server, bei dem es sich anmeldet, der Benutzername, der Fingerabdruck (Pin) des TLS-Zertifikats der TK-Anlage und ein einmaliger Registrierungscode; niemals das Passwort. Sie wird gelöscht, sobald das Softphone sie einmal abgerufen hat",
            fr: "la configuration d'un softphone telle que le standard la remet au proxy softphone pour que le softphone la récupère : le serveur auprès duquel s'enregistrer, le nom d'utilisateur, l'empreinte (pin) du certificat TLS du standard et un code d'enrôlement à usage unique ; jamais le mot de passe. Elle est supprimée dès que le softphone l'a récupérée une fois",
        },
        purpose: Tr {
            de: "Einrichtung eines Softphones (Client-Provisionierung) unabhängig von einer VPN-Anbindung",
            fr: "permettre à un softphone de se configurer (provisionnement du client) indépendamment d'une connexion VPN",
        },
        interest: None,
        from: None,
    },
];

fn translation(id: &str) -> Option<&'static Translation> {
    TRANSLATIONS.iter().find(|t| t.id == id)
}

/// `english` in `lang`, from `tr` (English itself when no translation exists; a test makes
/// sure one does).
fn text(lang: Lang, english: &'static str, tr: Option<Tr>) -> &'static str {
    match (lang, tr) {
        (Lang::De, Some(tr)) => tr.de,
        (Lang::Fr, Some(tr)) => tr.fr,
        _ => english,
    }
}

/// The category's title in `lang` (its id if it has no translation).
fn title(lang: Lang, category: &DataCategory) -> &'static str {
    translation(category.id).map_or(category.id, |t| lang.pick(t.title[0], t.title[1], t.title[2]))
}

/// The named interest of the category's Art. 6(1)(f) basis in `lang`, if it has one.
fn interest(lang: Lang, category: &DataCategory) -> Option<&'static str> {
    category.legal_basis.iter().find_map(|b| match b {
        LegalBasis::LegitimateInterest(english) => {
            Some(text(lang, english, translation(category.id).and_then(|t| t.interest)))
        }
        _ => None,
    })
}

/// A whole rendered privacy notice, one language. Build with [`notice`].
#[derive(Clone, Debug)]
pub struct Notice {
    lang: Lang,
    title: &'static str,
    subtitle: String,
    /// The heading of the table of contents (HTML only).
    contents: &'static str,
    sections: Vec<Section>,
}

#[derive(Clone, Debug)]
struct Section {
    /// The HTML id; a category's is `category-{id}`.
    anchor: String,
    title: String,
    blocks: Vec<Block>,
    subsections: Vec<Section>,
}

#[derive(Clone, Debug)]
enum Block {
    Paragraph(String),
    /// A contact: one line each, kept apart.
    Lines(Vec<String>),
    List(Vec<String>),
    /// Label and value pairs (a category's facts).
    Facts(Vec<(&'static str, String)>),
}

/// When the licence client talks to the licence service, as the notice tells it: the licence
/// subsystem fills it in from its own intervals (`pbx_actors::licence::SCHEDULE`), so the
/// notice states what the code does without privacy/ importing licence/.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LicenceSchedule {
    /// Between two licence checks.
    pub check_interval_s: u64,
    /// Between two licence checks while the licence service cannot be reached.
    pub check_retry_s: u64,
    /// Between two voucher syncs.
    pub fetch_interval_s: u64,
    /// After a failed voucher sync.
    pub fetch_retry_s: u64,
}

/// The privacy notice in `lang` for the PBX `operator` runs, with its configured `periods` and
/// the licence client's `licence` schedule.
pub fn notice(lang: Lang, operator: &Operator, periods: &Periods, licence: &LicenceSchedule) -> Notice {
    let configured = !operator.name.trim().is_empty();
    let l = |de: &'static str, en: &'static str, fr: &'static str| lang.pick(de, en, fr);
    let controller_title = l("Verantwortliche Stelle", "Controller", "Responsable du traitement");
    let authority_title =
        l("Zuständige Aufsichtsbehörde", "Competent supervisory authority", "Autorité de contrôle compétente");
    let subtitle = if configured {
        let name = operator.name.trim();
        match lang {
            Lang::De => format!("Für die von {name} betriebene Telefonanlage (TK-Anlage)"),
            Lang::En => format!("For the telephone exchange (PBX) operated by {name}"),
            Lang::Fr => format!("Pour le standard téléphonique exploité par {name}"),
        }
    } else {
        l("Für diese Telefonanlage (TK-Anlage)", "For this telephone exchange (PBX)", "Pour ce standard téléphonique")
            .to_string()
    };
    let not_configured = l(
        "Der Betreiber dieser TK-Anlage hat seine Angaben (Name und Kontaktdaten) für diese Erklärung noch nicht hinterlegt. Bitte fragen Sie denjenigen, der Ihnen den Telefondienst bereitstellt, wer der Verantwortliche ist.",
        "The operator of this PBX has not yet filled in its details (name and contact) for this notice. Please ask whoever provides your telephone service who the controller is.",
        "L'exploitant de ce standard téléphonique n'a pas encore renseigné ses coordonnées (nom et contact) pour la présente déclaration. Veuillez demander à la personne ou à l'organisme qui vous fournit le service téléphonique qui est le responsable du traitement.",
    );

    let general = Section::new(
        "general",
        l("Allgemeines", "General information", "Généralités"),
        vec![
            para(
                lang,
                "Diese Datenschutzerklärung erläutert, welche personenbezogenen Daten diese Telefonanlage (TK-Anlage) verarbeitet, zu welchen Zwecken, auf welcher Rechtsgrundlage und wie lange, und welche Rechte Ihnen zustehen. Auf der TK-Anlage läuft pbx, eine Software für Telefonanlagen: Telefone melden sich bei ihr an, und sie verbindet deren Gespräche.",
                "This notice explains which personal data this telephone exchange (PBX) processes, for which purposes, on which legal basis and for how long, and which rights you have. The PBX runs pbx, a telephone exchange software: phones register with it, and it connects their calls.",
                "La présente déclaration explique quelles données à caractère personnel ce standard téléphonique traite, à quelles fins, sur quelle base juridique et pendant combien de temps, ainsi que les droits dont vous disposez. Ce standard fonctionne avec pbx, un logiciel de standard téléphonique : les téléphones s'y enregistrent et il établit leurs appels.",
            ),
            para(
                lang,
                "Diese Erklärung wird aus dem Datenverzeichnis der TK-Anlage erzeugt – derselben Tabelle, aus der die TK-Anlage ihre Speicherfristen und ihre Funktionen für die Rechte betroffener Personen bezieht. Sie beschreibt daher, was die Software tatsächlich tut. Die genannten Fristen sind die auf dieser TK-Anlage eingestellten.",
                "This notice is generated from the PBX's data inventory, the same table from which the PBX takes its retention periods and its functions for the rights of data subjects. It therefore describes what the software actually does. The periods given are those configured on this PBX.",
                "Cette déclaration est générée à partir de l'inventaire des données du standard, le même tableau dont le standard tire ses durées de conservation et ses fonctions relatives aux droits des personnes concernées. Elle décrit donc ce que fait réellement le logiciel. Les durées indiquées sont celles configurées sur ce standard.",
            ),
        ],
    );

    let controller = Section::new(
        "controller",
        controller_title,
        if configured {
            let mut lines = vec![operator.name.trim().to_string()];
            lines.extend(lines_of(&operator.address));
            if !operator.phone.trim().is_empty() {
                lines.push(format!("{} {}", l("Tel.:", "Phone:", "Tél. :"), operator.phone.trim()));
            }
            lines.extend(lines_of(&operator.email));
            vec![
                para(
                    lang,
                    "Verantwortlich für die Datenverarbeitung im Sinne der Datenschutz-Grundverordnung (DSGVO):",
                    "Responsible for the processing of data within the meaning of the General Data Protection Regulation (GDPR):",
                    "Responsable du traitement des données au sens du règlement général sur la protection des données (RGPD) :",
                ),
                Block::Lines(lines),
                para(
                    lang,
                    "Verantwortlicher ist die natürliche oder juristische Person, die allein oder gemeinsam mit anderen über die Zwecke und Mittel der Verarbeitung personenbezogener Daten entscheidet (Art. 4 Nr. 7 DSGVO).",
                    "The controller is the natural or legal person who, alone or jointly with others, determines the purposes and means of the processing of personal data (Art. 4(7) GDPR).",
                    "Le responsable du traitement est la personne physique ou morale qui, seule ou conjointement avec d'autres, détermine les finalités et les moyens du traitement des données à caractère personnel (art. 4, point 7, du RGPD).",
                ),
            ]
        } else {
            vec![Block::Paragraph(not_configured.into())]
        },
    );

    let dpo_blocks = if !operator.dpo.trim().is_empty() {
        vec![
            para(
                lang,
                "Der Verantwortliche hat eine/n Datenschutzbeauftragte/n benannt. Die Person ist wie folgt zu erreichen:",
                "The controller has appointed a data protection officer, who can be reached as follows:",
                "Le responsable du traitement a désigné un délégué à la protection des données, joignable comme suit :",
            ),
            Block::Lines(lines_of(&operator.dpo)),
        ]
    } else if configured {
        vec![para(
            lang,
            "Der Verantwortliche hat keine/n Datenschutzbeauftragte/n benannt. Bitte richten Sie Fragen zum Datenschutz an den Verantwortlichen.",
            "The controller has not appointed a data protection officer. Please address questions about data protection to the controller.",
            "Le responsable du traitement n'a pas désigné de délégué à la protection des données. Veuillez adresser vos questions relatives à la protection des données au responsable du traitement.",
        )]
    } else {
        vec![para(
            lang,
            "Keine Angabe: Der Betreiber hat seine Angaben noch nicht hinterlegt.",
            "Not stated: the operator has not yet filled in its details.",
            "Non indiqué : l'exploitant n'a pas encore renseigné ses coordonnées.",
        )]
    };
    let dpo = Section::new(
        "data-protection-officer",
        l("Beauftragte für den Datenschutz", "Data protection officer", "Délégué à la protection des données"),
        dpo_blocks,
    );

    let authority_stated = !operator.authority.trim().is_empty();
    let authority = Section::new(
        "supervisory-authority",
        authority_title,
        if authority_stated {
            vec![
                para(
                    lang,
                    "Die für den Verantwortlichen zuständige Aufsichtsbehörde für den Datenschutz ist wie folgt zu erreichen:",
                    "The data protection supervisory authority competent for the controller can be reached as follows:",
                    "L'autorité de contrôle de la protection des données compétente pour le responsable du traitement peut être contactée comme suit :",
                ),
                Block::Lines(lines_of(&operator.authority)),
            ]
        } else {
            vec![para(
                lang,
                "Der Betreiber hat die für ihn zuständige Aufsichtsbehörde nicht angegeben. Sie können sich an jede Datenschutz-Aufsichtsbehörde wenden, insbesondere an die des Mitgliedstaats Ihres gewöhnlichen Aufenthalts oder Ihres Arbeitsplatzes (Art. 77 DSGVO).",
                "The operator has not stated its competent supervisory authority. You may turn to any data protection supervisory authority, in particular the one in the member state of your habitual residence or place of work (Art. 77 GDPR).",
                "L'exploitant n'a pas indiqué l'autorité de contrôle compétente. Vous pouvez vous adresser à toute autorité de contrôle de la protection des données, en particulier à celle de l'État membre de votre résidence habituelle ou de votre lieu de travail (art. 77 du RGPD).",
            )]
        },
    );

    let mut processing = Section::new(
        "processing",
        l("Datenverarbeitung durch die TK-Anlage", "Data processed by the PBX", "Données traitées par le standard"),
        vec![para(
            lang,
            "Die TK-Anlage verarbeitet die folgenden Kategorien personenbezogener Daten. Zu jeder finden Sie, was gespeichert wird, zu welchem Zweck, auf welcher Rechtsgrundlage, wie lange, wo und über wen.",
            "The PBX processes the following categories of personal data. For each you find what is kept, for which purpose, on which legal basis, for how long, where, and about whom.",
            "Le standard traite les catégories de données à caractère personnel suivantes. Pour chacune, vous trouverez ce qui est conservé, dans quel but, sur quelle base juridique, pendant combien de temps, où et à propos de qui.",
        )],
    );
    processing.subsections = INVENTORY.iter().map(|c| category_section(lang, c, periods)).collect();

    let licence_log = INVENTORY.iter().find(|c| c.id == "licence-service-log").map_or("", |c| title(lang, c));
    let push_records = INVENTORY.iter().find(|c| c.id == "push-records").map_or("", |c| title(lang, c));
    let transfers = Section::new(
        "transfers",
        l("Datenübermittlung nach außen", "What leaves the PBX", "Données transmises à l'extérieur"),
        vec![
            para(
                lang,
                "Abgesehen von der Vermittlung der Gespräche mit den bei ihr angemeldeten Telefonen übermittelt die TK-Anlage Daten nur an den Lizenzdienst des Herstellers, wenn der Betreiber einen solchen eingerichtet hat, an die Push-Dienste von Google und Apple, um mobile Softphones zu wecken, und an den Softphone-Proxy des Betreibers, wenn Softphones sich über einen solchen verbinden (unten). An den Lizenzdienst:",
                "Apart from carrying the calls of the phones registered with it, the PBX sends data only to the vendor's licence service, if the operator has configured one, to the push services of Google and Apple, to wake mobile softphones, and to the operator's softphone proxy, if softphones connect through one (below). To the licence service:",
                "En dehors de l'acheminement des appels des téléphones qui y sont enregistrés, le standard ne transmet des données qu'au service de licences de l'éditeur, si l'exploitant en a configuré un, aux services push de Google et d'Apple, pour réveiller les softphones mobiles, et au proxy softphone de l'exploitant, si des softphones s'y connectent (voir ci-dessous). Au service de licences :",
            ),
            Block::List(transfer_items(lang, licence)),
            Block::Paragraph(match lang {
                Lang::De => format!(
                    "Angaben zu Nebenstellen, Rufnummern, Namen, Adressen oder Gesprächen verlassen die TK-Anlage auf diesem Weg nie. Der Lizenzserver erfährt bei jeder Anfrage die IP-Adresse, von der aus die TK-Anlage sich verbindet; was er davon speichert, ist unter {} beschrieben.",
                    quote(lang, licence_log)
                ),
                Lang::En => format!(
                    "Nothing about extensions, telephone numbers, names, addresses or calls ever leaves the PBX this way. The licence server learns, with each request, the IP address from which the PBX connects; what it keeps is described under {}.",
                    quote(lang, licence_log)
                ),
                Lang::Fr => format!(
                    "Aucune information sur les postes, les numéros de téléphone, les noms, les adresses ou les appels ne quitte jamais le standard par ce biais. À chaque requête, le serveur de licences apprend l'adresse IP depuis laquelle le standard se connecte ; ce qu'il en conserve est décrit sous {}.",
                    quote(lang, licence_log)
                ),
            }),
            Block::Paragraph(proxy_transfer(lang)),
            Block::Paragraph(push_transfer(lang, push_records)),
        ],
    );

    let rights = rights_section(lang, authority_stated.then_some(authority_title));
    let exercise = exercise_section(lang, controller_title);

    Notice {
        lang,
        title: l("Datenschutzerklärung", "Privacy notice", "Déclaration de protection des données"),
        subtitle,
        contents: l("Inhalt", "Contents", "Sommaire"),
        sections: vec![general, controller, dpo, authority, processing, transfers, rights, exercise],
    }
}

/// A paragraph in `lang`.
fn para(lang: Lang, de: &str, en: &str, fr: &str) -> Block {
    Block::Paragraph(lang.pick(de, en, fr).to_string())
}

impl Section {
    fn new(anchor: &str, title: &str, blocks: Vec<Block>) -> Section {
        Section { anchor: anchor.to_string(), title: title.to_string(), blocks, subsections: Vec::new() }
    }
}

/// The non-blank lines of an operator field, trimmed.
fn lines_of(field: &str) -> Vec<String> {
    field.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

fn quote(lang: Lang, s: &str) -> String {
    match lang {
        Lang::De => format!("„{s}“"),
        Lang::En => format!("“{s}”"),
        Lang::Fr => format!("« {s} »"),
    }
}

/// One inventory category: its facts, in the seed's order of questions.
fn category_section(lang: Lang, c: &DataCategory, periods: &Periods) -> Section {
    let l = |de: &'static str, en: &'static str, fr: &'static str| lang.pick(de, en, fr);
    let tr = translation(c.id);
    let bases: Vec<String> = c.legal_basis.iter().map(|b| legal_basis(lang, *b, interest(lang, c))).collect();
    let mut places: Vec<String> = Vec::new();
    for place in c.stored_in {
        let phrase = storage(lang, place, c.stored_in.len() == 1);
        if !places.contains(&phrase) {
            places.push(phrase);
        }
    }
    let subjects: Vec<&str> = c.subjects.iter().map(|s| subject(lang, *s)).collect();
    let facts = vec![
        (l("Daten", "Data", "Données"), text(lang, c.data, tr.map(|t| t.data)).to_string()),
        (l("Zweck", "Purpose", "Finalité"), text(lang, c.purpose, tr.map(|t| t.purpose)).to_string()),
        (l("Rechtsgrundlage", "Legal basis", "Base juridique"), bases.join(lang.semicolon())),
        (l("Speicherdauer", "Retention", "Durée de conservation"), retention(lang, c, periods)),
        (l("Speicherort", "Stored", "Lieu de stockage"), places.join(lang.semicolon())),
        (l("Betroffene Personen", "Whose data", "Personnes concernées"), subjects.join(lang.semicolon())),
    ];
    Section::new(&format!("category-{}", c.id), title(lang, c), vec![Block::Facts(facts)])
}

fn legal_basis(lang: Lang, basis: LegalBasis, interest: Option<&str>) -> String {
    let interest = interest.unwrap_or_default();
    match (lang, basis) {
        (Lang::De, LegalBasis::Contract) => {
            "Art. 6 Abs. 1 lit. b DSGVO (Vertragserfüllung: Bereitstellung des Telefondienstes)".into()
        }
        (Lang::De, LegalBasis::LegalObligation) => {
            "Art. 6 Abs. 1 lit. c DSGVO (rechtliche Verpflichtung: Rechenschaftspflicht nach Art. 5 Abs. 2 und Art. 30 DSGVO)".into()
        }
        (Lang::De, LegalBasis::LegitimateInterest(_)) => {
            format!("Art. 6 Abs. 1 lit. f DSGVO (berechtigtes Interesse: {interest})")
        }
        (Lang::En, LegalBasis::Contract) => {
            format!("{} GDPR (performance of a contract: providing the telephone service)", basis.article())
        }
        (Lang::En, LegalBasis::LegalObligation) => {
            format!("{} GDPR (legal obligation: accountability under Art. 5(2) and Art. 30 GDPR)", basis.article())
        }
        (Lang::En, LegalBasis::LegitimateInterest(_)) => {
            format!("{} GDPR (legitimate interest: {interest})", basis.article())
        }
        (Lang::Fr, LegalBasis::Contract) => {
            "art. 6, paragraphe 1, point b) du RGPD (exécution d'un contrat : fourniture du service téléphonique)".into()
        }
        (Lang::Fr, LegalBasis::LegalObligation) => {
            "art. 6, paragraphe 1, point c) du RGPD (obligation légale : principe de responsabilité, art. 5, paragraphe 2, et art. 30 du RGPD)".into()
        }
        (Lang::Fr, LegalBasis::LegitimateInterest(_)) => {
            format!("art. 6, paragraphe 1, point f) du RGPD (intérêt légitime : {interest})")
        }
    }
}

/// "90 days" as it reads after "after" / "nach" (dative) / "après".
fn days(lang: Lang, n: u32) -> String {
    let unit = if n == 1 { lang.pick("Tag", "day", "jour") } else { lang.pick("Tagen", "days", "jours") };
    format!("{n} {unit}")
}

/// A span in its largest whole unit (hours, minutes, seconds): singular and plural word, count.
fn unit(lang: Lang, secs: u64) -> (&'static str, &'static str, u64) {
    if secs > 0 && secs.is_multiple_of(3600) {
        (lang.pick("Stunde", "hour", "heure"), lang.pick("Stunden", "hours", "heures"), secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        (lang.pick("Minute", "minute", "minute"), lang.pick("Minuten", "minutes", "minutes"), secs / 60)
    } else {
        (lang.pick("Sekunde", "second", "seconde"), lang.pick("Sekunden", "seconds", "secondes"), secs)
    }
}

/// "5 minutes".
fn span(lang: Lang, secs: u64) -> String {
    let (one, many, n) = unit(lang, secs);
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "every 24 hours", "every hour" (all three units are feminine in German and French).
fn every(lang: Lang, secs: u64) -> String {
    let (one, many, n) = unit(lang, secs);
    match (lang, n == 1) {
        (Lang::De, true) => format!("jede {one}"),
        (Lang::De, false) => format!("alle {n} {many}"),
        (Lang::En, true) => format!("every {one}"),
        (Lang::En, false) => format!("every {n} {many}"),
        (Lang::Fr, true) => format!("toutes les {many}"),
        (Lang::Fr, false) => format!("toutes les {n} {many}"),
    }
}

/// The category's retention with the configured `periods`, as one sentence. "Only in memory"
/// only when memory is its one place; name masking only when it holds extensions or numbers.
fn retention(lang: Lang, c: &DataCategory, periods: &Periods) -> String {
    let l = |de: &str, en: &str, fr: &str| lang.pick(de, en, fr).to_string();
    let from = translation(c.id).and_then(|t| t.from);
    let memory_only = c.stored_in.iter().all(|p| *p == "memory" || *p == "proxy:memory");
    let masks = c.subjects.iter().any(|s| matches!(s, SubjectKind::Extension | SubjectKind::PhoneNumber));
    match retention_for(c, periods) {
        Retention::UntilDeleted => l(
            "Wird gespeichert, bis der Betreiber den Datensatz löscht (zum Beispiel, wenn eine Nebenstelle entfernt wird) oder die betroffene Person die Löschung verlangt.",
            "Kept until the operator deletes the record (for example, when an extension is removed) or the data subject has it erased.",
            "Conservées jusqu'à ce que l'exploitant supprime l'enregistrement (par exemple lorsqu'un poste est supprimé) ou que la personne concernée en obtienne l'effacement.",
        ),
        Retention::UntilCompaction { hours } => match lang {
            Lang::De => format!(
                "Wird bei der nächsten Verdichtung gelöscht: höchstens {hours} Stunde(n) nach der Änderung, wenige Sekunden nach einer Löschung auf Verlangen."
            ),
            Lang::En => format!(
                "Removed at the next compaction: at most {hours} hour(s) after the change, and within seconds of an erasure."
            ),
            Lang::Fr => format!(
                "Supprimées au prochain compactage : au plus {hours} heure(s) après la modification, quelques secondes après un effacement."
            ),
        },
        Retention::WhileTheErasureHolds => l(
            "Wird aufbewahrt, solange die Daten der TK-Anlage bestehen: der Vermerk verhindert, dass eine Löschung rückgängig gemacht wird.",
            "Kept as long as the PBX's data exists: it is what keeps an erasure from being undone.",
            "Conservées tant que les données du standard existent : c'est ce qui empêche qu'un effacement soit annulé.",
        ),
        Retention::UntilExpiry => l(
            "Wird gespeichert, bis die Anmeldung abläuft oder das Telefon sie beendet; abgelaufene Anmeldungen werden gelöscht.",
            "Kept until the registration expires or the phone ends it; expired registrations are deleted.",
            "Conservées jusqu'à l'expiration de l'enregistrement ou jusqu'à ce que le téléphone y mette fin ; les enregistrements expirés sont supprimés.",
        ),
        Retention::MemorySeconds(secs) => {
            let secs = span(lang, u64::from(secs));
            match (lang, memory_only) {
                (Lang::De, true) => format!("Wird nur im Arbeitsspeicher gehalten, höchstens {secs} lang."),
                (Lang::De, false) => format!("Im Arbeitsspeicher höchstens {secs} lang."),
                (Lang::En, true) => format!("Kept only in memory, for at most {secs}."),
                (Lang::En, false) => format!("In memory for at most {secs}."),
                (Lang::Fr, true) => format!("Conservées uniquement en mémoire, {secs} au plus."),
                (Lang::Fr, false) => format!("En mémoire, {secs} au plus."),
            }
        }
        Retention::CallDuration if memory_only => l(
            "Wird nur im Arbeitsspeicher gehalten, solange das Gespräch dauert.",
            "Kept only in memory, while the call lasts.",
            "Conservées uniquement en mémoire, pendant la durée de l'appel.",
        ),
        Retention::CallDuration => l(
            "Im Arbeitsspeicher, solange das Gespräch dauert.",
            "In memory while the call lasts.",
            "En mémoire, pendant la durée de l'appel.",
        ),
        Retention::Delete { days: n, from: english, .. } => {
            let from = text(lang, english, from);
            let n = days(lang, n);
            match lang {
                Lang::De => format!("Wird nach {n} ab {from} gelöscht."),
                Lang::En => format!("Deleted {n} after {from}."),
                Lang::Fr => format!("Supprimées {n} après {from}."),
            }
        }
        Retention::AnonymiseThenDelete { days: anonymise, deleted_after_days, from: english, .. } => {
            let from = text(lang, english, from);
            let (a, d) = (days(lang, anonymise), days(lang, deleted_after_days));
            let how = match (lang, masks) {
                (Lang::De, true) => format!(
                    "IP-Adressen werden auf ihren Netzanteil gekürzt – IPv4 auf /24, IPv6 auf /48 –, bei Namen und Rufnummern werden die letzten {MASKED_TAIL} Zeichen unkenntlich gemacht"
                ),
                (Lang::De, false) => {
                    "IP-Adressen werden auf ihren Netzanteil gekürzt: IPv4 auf /24, IPv6 auf /48".into()
                }
                (Lang::En, true) => format!(
                    "IP addresses are cut to their network part, IPv4 to /24 and IPv6 to /48, and names and numbers lose their last {MASKED_TAIL} characters"
                ),
                (Lang::En, false) => "IP addresses are cut to their network part, IPv4 to /24 and IPv6 to /48".into(),
                (Lang::Fr, true) => format!(
                    "les adresses IP sont réduites à leur partie réseau, /24 pour IPv4 et /48 pour IPv6, et les {MASKED_TAIL} derniers caractères des noms et des numéros sont masqués"
                ),
                (Lang::Fr, false) => {
                    "les adresses IP sont réduites à leur partie réseau, /24 pour IPv4 et /48 pour IPv6".into()
                }
            };
            match lang {
                Lang::De => format!("Wird nach {a} ab {from} anonymisiert ({how}) und nach {d} ab {from} gelöscht."),
                Lang::En => format!("Anonymised {a} after {from} ({how}), and deleted {d} after {from}."),
                Lang::Fr => format!("Anonymisées {a} après {from} ({how}), puis supprimées {d} après {from}."),
            }
        }
    }
}

/// Where a `stored_in` entry lives, for a reader; `only` when it is the category's one place.
/// An entry of an unknown kind is shown as it is, so nothing is hidden.
fn storage(lang: Lang, place: &str, only: bool) -> String {
    let l = |de: &'static str, en: &'static str, fr: &'static str| lang.pick(de, en, fr).to_string();
    match place.split_once(':').map_or(place, |(kind, _)| kind) {
        "redb" => l(
            "auf dieser TK-Anlage (in ihrer Datenbank)",
            "on this PBX (in its database)",
            "sur ce standard (dans sa base de données)",
        ),
        "raft" => l(
            "auf jedem Knoten dieser TK-Anlage (in seinem Replikationsprotokoll)",
            "on every node of this PBX (in its replication log)",
            "sur chaque nœud de ce standard (dans son journal de réplication)",
        ),
        "licence-server" => l(
            "auf dem Lizenzserver des Herstellers, nur wenn ein Lizenzdienst eingerichtet ist",
            "on the licence server of the vendor, only if a licence service is configured",
            "sur le serveur de licences de l'éditeur, uniquement si un service de licences est configuré",
        ),
        _ if place == "proxy:memory" => l(
            "nur im Arbeitsspeicher des Softphone-Proxys des Betreibers, nie auf einem Datenträger",
            "only in the memory of the operator's softphone proxy, never written to disk",
            "uniquement dans la mémoire vive du proxy softphone de l'exploitant, jamais sur disque",
        ),
        "proxy" => l(
            "auf dem Softphone-Proxy des Betreibers (in seiner Datenbank), nur wenn Softphones sich über einen solchen verbinden",
            "on the operator's softphone proxy (in its database), only if softphones connect through one",
            "sur le proxy softphone de l'exploitant (dans sa base de données), uniquement si des softphones s'y connectent",
        ),
        "memory" if only => l(
            "nur im Arbeitsspeicher der TK-Anlage, nie auf einem Datenträger",
            "only in the PBX's memory, never written to disk",
            "uniquement dans la mémoire vive du standard, jamais sur disque",
        ),
        "memory" => l(
            "im Arbeitsspeicher der TK-Anlage, solange sie läuft",
            "in the PBX's memory while it runs",
            "dans la mémoire vive du standard pendant son fonctionnement",
        ),
        "log" => l(
            "in der Protokollausgabe der TK-Anlage, aufbewahrt so lange, wie das Protokollsystem des Betreibers sie aufbewahrt",
            "in the PBX's log output, kept as long as the operator's log system keeps it",
            "dans la sortie de journalisation du standard, conservée aussi longtemps que le système de journalisation de l'exploitant la conserve",
        ),
        _ => place.to_string(),
    }
}

fn subject(lang: Lang, kind: SubjectKind) -> &'static str {
    match kind {
        SubjectKind::Extension => {
            lang.pick("Nutzer von Nebenstellen", "users of extensions", "utilisateurs des postes")
        }
        SubjectKind::PhoneNumber => lang.pick(
            "Anrufer und Angerufene, erkennbar an ihrer Rufnummer (auch außerhalb dieser TK-Anlage)",
            "callers and called parties, identified by their telephone number (also outside this PBX)",
            "appelants et appelés, identifiés par leur numéro de téléphone (y compris en dehors de ce standard)",
        ),
        SubjectKind::IpAddress => lang.pick(
            "Inhaber von IP-Adressen, von denen Anfragen kommen (Telefone und andere Geräte)",
            "holders of the IP addresses that requests come from (phones and other devices)",
            "titulaires des adresses IP d'où proviennent les requêtes (téléphones et autres appareils)",
        ),
    }
}

/// What the licence client sends, with the intervals the licence machines use.
fn transfer_items(lang: Lang, licence: &LicenceSchedule) -> Vec<String> {
    let (check, check_retry) = (every(lang, licence.check_interval_s), every(lang, licence.check_retry_s));
    let (fetch, fetch_retry) = (every(lang, licence.fetch_interval_s), every(lang, licence.fetch_retry_s));
    match lang {
        Lang::De => vec![
            format!("die Lizenzprüfung: ausschließlich die Seriennummer der TK-Anlage – beim Start, {check} und {check_retry}, solange der Lizenzdienst nicht erreichbar ist;"),
            format!("der Voucher-Abgleich: die Seriennummer – beim Start, {fetch} und {fetch_retry} nach einem fehlgeschlagenen Versuch;"),
            "das Einlösen eines Vouchers, wenn der Administrator des Betreibers es veranlasst: die Seriennummer und der Vouchercode.".into(),
        ],
        Lang::En => vec![
            format!("the licence check: the PBX's serial number and nothing else, at start, {check}, and {check_retry} while the licence service cannot be reached;"),
            format!("the voucher sync: the serial number, at start, {fetch}, and {fetch_retry} after a failed attempt;"),
            "redeeming a voucher, when the operator's administrator asks for it: the serial number and the voucher code.".into(),
        ],
        Lang::Fr => vec![
            format!("la vérification de licence : uniquement le numéro de série du standard, au démarrage, {check} et {check_retry} tant que le service de licences est injoignable ;"),
            format!("la synchronisation des vouchers : le numéro de série, au démarrage, {fetch} et {fetch_retry} après un échec ;"),
            "l'échange d'un voucher, à la demande de l'administrateur de l'exploitant : le numéro de série et le code du voucher.".into(),
        ],
    }
}

/// What goes to the push services when a mobile softphone is woken (seed: "Push Notification
/// Service", "Server Locations"); `records` is the title of the category that keeps the pushes.
/// The message is `{"type":"call"}` (`pbx_node::push_dispatch`; tests/tests/push.rs checks that
/// the caller's number is not in it).
fn push_transfer(lang: Lang, records: &str) -> String {
    let records = quote(lang, records);
    match lang {
        Lang::De => format!(
            "Um mobile Softphone-Clients aus dem Stromsparmodus in den Betriebsmodus wechseln zu lassen, wenn ein Anruf für sie eintrifft, sendet die TK-Anlage – nur für Telefone, die sich mit Push-Parametern (RFC 8599) angemeldet haben, und nur, wenn der Betreiber Push-Benachrichtigungen eingerichtet hat – das Push-Token bzw. die Geräte-ID des Telefons und eine Weckmeldung, die nur einen wartenden Anruf meldet (nie, wer anruft), an den geräteabhängigen Push Notification Server: Firebase Cloud Messaging (FCM) von Google für Android-Geräte, den Apple Push Notification Service (APNs) für iOS-Geräte. Diese Dienste laufen auf Servern ihrer Anbieter, auch außerhalb der Europäischen Union (Google- und Apple-Server in den USA). Hinsichtlich der Speicherung und Übermittlung weiterer personenbezogener Daten verweisen wir auf die Datenschutzerklärungen dieser Anbieter. Was die TK-Anlage selbst über jede Benachrichtigung speichert, ist unter {records} beschrieben."
        ),
        Lang::En => format!(
            "To let a mobile softphone client switch from power saving mode to operating mode when a call comes for it, the PBX sends, only for phones that registered with push parameters (RFC 8599) and only if the operator has set up push notifications, the phone's push token or device ID and a wake-up message that says only that a call is waiting (never who calls) to the device-dependent push notification server: Firebase Cloud Messaging (FCM) of Google for Android devices, the Apple Push Notification service (APNs) for iOS devices. These services run on their providers' servers, also outside the European Union (Google's and Apple's servers in the USA). With regard to the storage and transmission of further personal data, we refer to the privacy policies of these providers. What the PBX itself keeps about each push is described under {records}."
        ),
        Lang::Fr => format!(
            "Pour que les clients softphone mobiles passent du mode économie au mode de fonctionnement lorsqu'un appel leur parvient, le standard envoie, uniquement pour les téléphones enregistrés avec des paramètres push (RFC 8599) et uniquement si l'exploitant a configuré les notifications push, le jeton push ou l'ID de l'appareil du téléphone et un message de réveil qui signale seulement un appel en attente (jamais qui appelle) au serveur de notification push dépendant de l'appareil : Firebase Cloud Messaging (FCM) de Google pour les appareils Android, le service de notification push d'Apple (APNs) pour les appareils iOS. Ces services fonctionnent sur les serveurs de leurs fournisseurs, y compris en dehors de l'Union européenne (serveurs de Google et d'Apple aux États-Unis). En ce qui concerne le stockage et la transmission d'autres données à caractère personnel, nous nous référons aux déclarations de protection des données de ces fournisseurs. Ce que le standard conserve lui-même de chaque notification est décrit sous {records}."
        ),
    }
}

/// What goes to the operator's softphone proxy and where it runs (seed: "Auerproxy Server",
/// "Server Locations"; here the operator's own `pbx proxy`, not the vendor's), with the
/// periods and titles of the proxy's categories.
fn proxy_transfer(lang: Lang) -> String {
    let find = |id| INVENTORY.iter().find(|c: &&DataCategory| c.id == id);
    let titled = |id| find(id).map_or(String::new(), |c| quote(lang, title(lang, c)));
    let kept = |id| match find(id).map(|c| c.retention) {
        Some(Retention::Delete { days: n, .. }) => days(lang, n),
        _ => String::new(),
    };
    let (session, debug, provisioning) = (titled("proxy-session"), titled("proxy-debug"), titled("provisioning-cache"));
    let (session_days, debug_days) = (kept("proxy-session"), kept("proxy-debug"));
    match lang {
        Lang::De => format!(
            "Hat der Betreiber einen Softphone-Proxy eingerichtet (`pbx proxy`), können sich Softphones über ihn unabhängig von einer VPN-Anbindung mit der TK-Anlage verbinden: Die TK-Anlage baut selbst eine verschlüsselte, gegenseitig authentifizierte Verbindung zum Proxy auf (QUIC mit TLS), und der Proxy leitet die Gespräche der Softphones – ihre Signalisierung und ihre Sprache – zwischen ihnen und der TK-Anlage weiter. Folgende Daten gelangen bei Verwendung des Softphones zur Verbindungsherstellung an den Proxy: die aktuelle externe IP-Adresse und der Port des Softphones und der TK-Anlage, die Seriennummer der TK-Anlage, der Benutzername des Softphones und ggf. das Token für Push-Benachrichtigungen; das Passwort des Softphones nie (der Proxy leitet nur die Anfrage der TK-Anlage und die Antwort des Softphones darauf weiter). Diese Daten werden gespeichert und nach {session_days} ab der letzten Nutzung gelöscht (siehe {session}). Zur Konfiguration der Softphones werden ihre Provisionierungsdaten über den Proxy übermittelt; sie werden zwischengespeichert und sofort nach der Weiterleitung gelöscht (siehe {provisioning}). Nur solange der Administrator der TK-Anlage zur Fehlersuche den Debug-Modus eingeschaltet hat – er endet von selbst –, erfasst der Proxy zusätzlich die Klarnamen von Rufzielen; diese zusätzlichen Daten werden nach {debug_days} automatisch gelöscht (siehe {debug}). Den Proxy betreibt der Betreiber selbst, nicht der Hersteller der Software, auf einem Server seiner Wahl; der Server und seine Datenverarbeitung unterliegen dem Recht des Landes, in dem er sich befindet."
        ),
        Lang::En => format!(
            "If the operator has set up a softphone proxy (`pbx proxy`), softphones can connect to the PBX through it, independently of a VPN connection: the PBX itself opens an encrypted, mutually authenticated connection to the proxy (QUIC with TLS), and the proxy relays the softphones' calls, their signalling and their voice, between them and the PBX. When a softphone is used, the following data reaches the proxy to establish the connection: the current external IP address and port of the softphone and of the PBX, the PBX's serial number, the softphone's user name and, if applicable, its token for push notifications; never the softphone's password (the proxy only relays the PBX's challenge and the softphone's answer to it). This data is stored and deleted {session_days} after the last use (see {session}). To configure the softphones, their provisioning data goes through the proxy; it is cached and deleted immediately after forwarding (see {provisioning}). Only while the PBX's administrator has switched debug mode on for troubleshooting (it ends by itself), the proxy also records the real names of call destinations; this additional data is automatically deleted after {debug_days} (see {debug}). The proxy is run by the operator itself, not by the vendor of the software, on a server of the operator's choosing; the server and its data processing are subject to the law of the country in which it is located."
        ),
        Lang::Fr => format!(
            "Si l'exploitant a mis en place un proxy softphone (`pbx proxy`), les softphones peuvent, par son intermédiaire, se connecter au standard indépendamment d'une connexion VPN : le standard établit lui-même une connexion chiffrée et mutuellement authentifiée avec le proxy (QUIC avec TLS), et le proxy relaie les appels des softphones, leur signalisation et leur voix, entre eux et le standard. Lors de l'utilisation du softphone, les données suivantes parviennent au proxy pour établir la connexion : l'adresse IP externe actuelle et le port du softphone et du standard, le numéro de série du standard, le nom d'utilisateur du softphone et, le cas échéant, son jeton pour les notifications push ; jamais le mot de passe du softphone (le proxy ne fait que relayer le défi du standard et la réponse du softphone). Ces données sont enregistrées et supprimées {session_days} après la dernière utilisation (voir {session}). Pour la configuration des softphones, leurs données de provisionnement passent par le proxy ; elles sont stockées temporairement et supprimées immédiatement après leur transmission (voir {provisioning}). Uniquement tant que l'administrateur du standard a activé le mode de débogage pour un dépannage (il prend fin de lui-même), le proxy enregistre en outre les noms réels des destinations d'appel ; ces données supplémentaires sont automatiquement supprimées au bout de {debug_days} (voir {debug}). Le proxy est exploité par l'exploitant lui-même, et non par l'éditeur du logiciel, sur un serveur de son choix ; le serveur et son traitement des données sont soumis au droit du pays dans lequel il se trouve."
        ),
    }
}

/// Categories processed (at least in part) on a legitimate interest: those open to objection.
fn objectable() -> impl Iterator<Item = &'static DataCategory> {
    INVENTORY.iter().filter(|c| c.legal_basis.iter().any(|b| matches!(b, LegalBasis::LegitimateInterest(_))))
}

/// Art. 15–21 and 77, the objection list computed from the inventory; `authority` is the
/// title of the authority section when the operator named one.
fn rights_section(lang: Lang, authority: Option<&str>) -> Section {
    let l = |de: &'static str, en: &'static str, fr: &'static str| lang.pick(de, en, fr);
    let objectable: Vec<String> =
        objectable().map(|c| format!("{} ({})", title(lang, c), interest(lang, c).unwrap_or_default())).collect();
    let mut blocks = vec![
        para(
            lang,
            "Als betroffene Person haben Sie nach der DSGVO folgende Rechte:",
            "As a data subject, you have the following rights under the GDPR:",
            "En tant que personne concernée, vous disposez des droits suivants en vertu du RGPD :",
        ),
        Block::List(
            match lang {
                Lang::De => vec![
                    "Recht auf Auskunft (Art. 15 DSGVO)",
                    "Recht auf Berichtigung (Art. 16 DSGVO)",
                    "Recht auf Löschung („Recht auf Vergessenwerden“, Art. 17 DSGVO)",
                    "Recht auf Einschränkung der Verarbeitung (Art. 18 DSGVO)",
                    "Recht auf Datenübertragbarkeit (Art. 20 DSGVO)",
                ],
                Lang::En => vec![
                    "Right of access (Art. 15 GDPR)",
                    "Right to rectification (Art. 16 GDPR)",
                    "Right to erasure (“right to be forgotten”, Art. 17 GDPR)",
                    "Right to restriction of processing (Art. 18 GDPR)",
                    "Right to data portability (Art. 20 GDPR)",
                ],
                Lang::Fr => vec![
                    "Droit d'accès (art. 15 du RGPD)",
                    "Droit de rectification (art. 16 du RGPD)",
                    "Droit à l'effacement (« droit à l'oubli », art. 17 du RGPD)",
                    "Droit à la limitation du traitement (art. 18 du RGPD)",
                    "Droit à la portabilité des données (art. 20 du RGPD)",
                ],
            }
            .into_iter()
            .map(String::from)
            .collect(),
        ),
        para(
            lang,
            "Darüber hinaus haben Sie gemäß Art. 21 DSGVO ein Recht auf Widerspruch, soweit eine Verarbeitung auf Art. 6 Abs. 1 lit. f DSGVO (berechtigtes Interesse) beruht.",
            "In addition, under Art. 21 GDPR you have the right to object to processing insofar as it is based on Art. 6(1)(f) GDPR (legitimate interest).",
            "De plus, conformément à l'art. 21 du RGPD, vous avez le droit de vous opposer au traitement dans la mesure où celui-ci est fondé sur l'art. 6, paragraphe 1, point f) du RGPD (intérêt légitime).",
        ),
    ];
    if objectable.is_empty() {
        blocks.push(para(
            lang,
            "Auf dieser TK-Anlage beruht keine Verarbeitung darauf.",
            "On this PBX, no processing is based on it.",
            "Sur ce standard, aucun traitement n'est fondé sur cette base.",
        ));
    } else {
        blocks.push(para(
            lang,
            "Auf dieser TK-Anlage betrifft das:",
            "On this PBX, this concerns:",
            "Sur ce standard, cela concerne :",
        ));
        blocks.push(Block::List(objectable));
    }
    blocks.push(para(
        lang,
        "Bei Verarbeitungen auf Grundlage von Art. 6 Abs. 1 lit. b oder c DSGVO besteht in der Regel kein Widerspruchsrecht.",
        "For processing based on Art. 6(1)(b) or (c) GDPR, there is in general no right to object.",
        "Pour les traitements fondés sur l'art. 6, paragraphe 1, point b) ou c) du RGPD, il n'existe en général pas de droit d'opposition.",
    ));
    let complaint = l(
        "Außerdem haben Sie das Recht, sich bei einer Datenschutz-Aufsichtsbehörde über die Verarbeitung Ihrer personenbezogenen Daten zu beschweren (Art. 77 DSGVO)",
        "You also have the right to lodge a complaint with a data protection supervisory authority about the processing of your personal data (Art. 77 GDPR)",
        "Vous avez également le droit d'introduire une réclamation auprès d'une autorité de contrôle de la protection des données au sujet du traitement de vos données à caractère personnel (art. 77 du RGPD)",
    );
    blocks.push(Block::Paragraph(match authority {
        None => format!("{complaint}."),
        Some(section) => match lang {
            Lang::De => format!(
                "{complaint}; die für den Betreiber zuständige Behörde finden Sie unter {}.",
                quote(lang, section)
            ),
            Lang::En => format!(
                "{complaint}; the authority competent for the operator is named under {}.",
                quote(lang, section)
            ),
            Lang::Fr => format!(
                "{complaint} ; l'autorité compétente pour l'exploitant est indiquée sous {}.",
                quote(lang, section)
            ),
        },
    }));
    Section::new(
        "rights",
        l("Rechte der betroffenen Personen", "Rights of data subjects", "Droits des personnes concernées"),
        blocks,
    )
}

/// How a request reaches the PBX's subject-rights functions, and what they do.
fn exercise_section(lang: Lang, controller: &str) -> Section {
    let l = |de: &'static str, en: &'static str, fr: &'static str| lang.pick(de, en, fr);
    let audit = INVENTORY.iter().find(|c| c.id == "privacy-audit").map_or("", |c| title(lang, c));
    let (controller, audit, erased) = (quote(lang, controller), quote(lang, audit), quote(lang, ERASED));
    let (intro, items, outro) = match lang {
        Lang::De => (
            format!("Bitte richten Sie Ihr Anliegen an den Betreiber dieser TK-Anlage (siehe {controller}). Der Betreiber bearbeitet es mit den Funktionen der TK-Anlage für die Rechte betroffener Personen. Diese finden, was zu einer Nebenstelle, einer Rufnummer oder einer IP-Adresse gespeichert ist, und können es dann:"),
            vec![
                "vollständig als ein maschinenlesbares Dokument ausgeben (Auskunft und Datenübertragbarkeit);".to_string(),
                "berichtigen;".to_string(),
                format!("löschen; wo ein Datensatz für eine andere Person erhalten bleiben muss, etwa der Verbindungsdatensatz Ihres Gesprächspartners, wird Ihre Nummer dort durch {erased} ersetzt;"),
                "in der Verarbeitung einschränken oder Ihren Widerspruch vermerken, bis Sie die Einschränkung aufheben lassen oder den Widerspruch zurücknehmen.".to_string(),
            ],
            format!("Jede Anfrage wird unter einem Pseudonym vermerkt, nie mit Ihrer Rufnummer oder Adresse (siehe {audit})."),
        ),
        Lang::En => (
            format!("Please address your request to the operator of this PBX (see {controller}). The operator serves it with the PBX's functions for the rights of data subjects, which find what is held about an extension, a telephone number or an IP address, and can then:"),
            vec![
                "export all of it as one machine-readable document (access and portability);".to_string(),
                "correct it;".to_string(),
                format!("erase it; where a record must remain for someone else, such as the call record of the person you spoke with, your number is replaced there by {erased};"),
                "restrict its processing or record your objection, until you have the restriction lifted or withdraw the objection.".to_string(),
            ],
            format!("Each request is recorded under a pseudonym, never with your number or address (see {audit})."),
        ),
        Lang::Fr => (
            format!("Veuillez adresser votre demande à l'exploitant de ce standard (voir {controller}). L'exploitant la traite à l'aide des fonctions du standard relatives aux droits des personnes concernées, qui retrouvent ce qui est conservé au sujet d'un poste, d'un numéro de téléphone ou d'une adresse IP, et permettent ensuite de :"),
            vec![
                "l'exporter intégralement sous la forme d'un document lisible par machine (accès et portabilité) ;".to_string(),
                "le rectifier ;".to_string(),
                format!("l'effacer ; lorsqu'un enregistrement doit être conservé pour une autre personne, comme le relevé d'appel de votre interlocuteur, votre numéro y est remplacé par {erased} ;"),
                "en limiter le traitement ou enregistrer votre opposition, jusqu'à ce que vous fassiez lever la limitation ou retiriez l'opposition.".to_string(),
            ],
            format!("Chaque demande est consignée sous un pseudonyme, jamais avec votre numéro ou votre adresse (voir {audit})."),
        ),
    };
    Section::new(
        "exercising-rights",
        l("Wahrnehmung Ihrer Rechte", "How to exercise your rights", "Exercice de vos droits"),
        vec![Block::Paragraph(intro), Block::List(items), Block::Paragraph(outro)],
    )
}

impl Notice {
    pub fn lang(&self) -> Lang {
        self.lang
    }

    /// CommonMark, for the CLI and for pasting into a website. Every text is escaped, so an
    /// operator's `*` or `<` stays a character.
    pub fn markdown(&self) -> String {
        let mut out = format!("# {}\n\n{}\n", md(self.title), md_line(&self.subtitle));
        for section in &self.sections {
            md_section(&mut out, section, 2, self.lang);
        }
        out
    }

    /// A complete HTML5 page, UTF-8, with a table of contents and a little inline CSS. Every
    /// text is escaped; anchors are `category-{id}` for the inventory's categories.
    pub fn html(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{}</title>\n\
             <style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n<p class=\"subtitle\">{}</p>\n\
             <nav>\n<h2>{}</h2>\n",
            self.lang.code(),
            html(self.title),
            html(self.title),
            html(&self.subtitle),
            html(self.contents),
        );
        html_toc(&mut out, &self.sections);
        out.push_str("</nav>\n");
        for section in &self.sections {
            html_section(&mut out, section, 2);
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;line-height:1.5;max-width:48rem;margin:2rem auto;padding:0 1rem;color:#222}\
h1{margin-bottom:0}.subtitle{margin-top:.25rem;color:#555}dt{font-weight:600}dd{margin:0 0 .5rem 1.5rem}\
address{font-style:normal;margin:0 0 1rem 1.5rem}nav ul{padding-left:1.25rem}";

/// Text with the characters CommonMark could read as markup backslash-escaped.
fn md(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// [`md`], and a line start that would open a heading, list or rule escaped too.
fn md_line(s: &str) -> String {
    let s = md(s);
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if s.starts_with(['#', '-', '+', '=']) {
        format!("\\{s}")
    } else if digits > 0 && s[digits..].starts_with(['.', ')']) {
        format!("{}\\{}", &s[..digits], &s[digits..])
    } else {
        s
    }
}

fn md_section(out: &mut String, section: &Section, level: usize, lang: Lang) {
    let _ = write!(out, "\n{} {}\n", "#".repeat(level), md(&section.title));
    for block in &section.blocks {
        out.push('\n');
        match block {
            Block::Paragraph(p) => {
                let _ = writeln!(out, "{}", md_line(p));
            }
            // Two trailing spaces: a hard line break.
            Block::Lines(lines) => {
                let _ = writeln!(out, "{}", lines.iter().map(|l| md_line(l)).collect::<Vec<_>>().join("  \n"));
            }
            Block::List(items) => items.iter().for_each(|i| {
                let _ = writeln!(out, "- {}", md(i));
            }),
            Block::Facts(facts) => facts.iter().for_each(|(label, value)| {
                let _ = writeln!(out, "- **{}{}** {}", md(label), lang.colon(), md(value));
            }),
        }
    }
    for sub in &section.subsections {
        md_section(out, sub, level + 1, lang);
    }
}

/// Text safe inside an element or a quoted attribute.
fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_toc(out: &mut String, sections: &[Section]) {
    out.push_str("<ul>\n");
    for s in sections {
        let _ = write!(out, "<li><a href=\"#{}\">{}</a>", html(&s.anchor), html(&s.title));
        if !s.subsections.is_empty() {
            out.push('\n');
            html_toc(out, &s.subsections);
        }
        out.push_str("</li>\n");
    }
    out.push_str("</ul>\n");
}

fn html_section(out: &mut String, section: &Section, level: usize) {
    let _ = writeln!(out, "<section id=\"{}\">\n<h{level}>{}</h{level}>", html(&section.anchor), html(&section.title));
    for block in &section.blocks {
        match block {
            Block::Paragraph(p) => {
                let _ = writeln!(out, "<p>{}</p>", html(p));
            }
            Block::Lines(lines) => {
                let _ = writeln!(
                    out,
                    "<address>{}</address>",
                    lines.iter().map(|l| html(l)).collect::<Vec<_>>().join("<br>\n")
                );
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                items.iter().for_each(|i| {
                    let _ = writeln!(out, "<li>{}</li>", html(i));
                });
                out.push_str("</ul>\n");
            }
            Block::Facts(facts) => {
                out.push_str("<dl>\n");
                facts.iter().for_each(|(label, value)| {
                    let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", html(label), html(value));
                });
                out.push_str("</dl>\n");
            }
        }
    }
    for sub in &section.subsections {
        html_section(out, sub, level + 1);
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests;
