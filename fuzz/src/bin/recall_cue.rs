//! A recall cue, the one input every host sends: reading the dates in it
//! (`cue.rs`) and ranking a small index with it must never panic; at most
//! four days are read, results respect the limit, and every score is a
//! positive finite number.
use iai_storer::index::{DocMeta, Filter, Index};

fn main() {
    const DAY: i64 = 86_400_000;
    let texts = [
        "standup notes: the release train slipped on 3 June 2023",
        "Caroline: I went to the LGBTQ support group yesterday",
        "deploy 2023-06-03 /srv/app/releases/4411 sha 9f2c1e",
        "東京 会議 данные Zürich ünïcödé",
        "",
        "may I ask 2 things about June",
    ];
    let mut index = Index::default();
    for (n, text) in texts.iter().cycle().take(24).enumerate() {
        let meta = DocMeta {
            id: [n as u8; 16],
            created_at: (19_500 + n as i64) * DAY,
            tier: 1,
            role: 0,
            // Some sessions, some records without one (a chain of neighbours).
            session: (n % 3 != 0).then(|| format!("s{}", n % 4)),
            project: None,
            reinforced: 0,
            superseded_by: None,
        };
        index.add(meta, text);
    }
    // A panic ends the process (AFL records it): no state outlives one.
    let index = std::panic::AssertUnwindSafe(index);
    afl::fuzz!(|data: &[u8]| {
        let cue = String::from_utf8_lossy(data);
        assert!(iai_storer::cue::days(&cue).len() <= iai_storer::cue::MAX_DATES);
        let (hits, _) = index.search(&cue, 0, 10, &Filter::default(), 19_530 * DAY);
        assert!(hits.len() <= 10);
        for (_, score) in hits {
            assert!(score.is_finite() && score > 0.0, "{score}");
        }
    });
}
