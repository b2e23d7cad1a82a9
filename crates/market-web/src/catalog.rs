//! What the shop sells: four items, as in the original (ids, titles, prices
//! and ratings carry over; the words are our own).

use std::fmt;

use serde::Serialize;

/// An amount of money in whole cents, so totals are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct Money(pub u64);

impl fmt::Display for Money {
    /// `$19.99`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        Money(iter.map(|m| m.0).sum())
    }
}

/// One item for sale.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    /// Its id, also the name of its picture.
    pub id: &'static str,
    /// Its name.
    pub title: &'static str,
    /// Its price.
    pub price: Money,
    /// One line to make you want it.
    pub blurb: &'static str,
    /// A few more lines.
    pub description: &'static str,
    /// What the lawyers asked us to say.
    pub warnings: &'static [&'static str],
}

/// Every item, sorted by id as the original listed them.
pub const CATALOG: [Item; 4] = [
    Item {
        id: "basketball",
        title: "Basketball",
        price: Money(1999),
        blurb: "Bounces back from anything, unlike your last deploy.",
        description: "Full size, pebbled grip, holds its air through a whole season of lunchtime games.",
        warnings: &["Not a dodgeball, whatever the intern says."],
    },
    Item {
        id: "briefcase",
        title: "Briefcase",
        price: Money(4999),
        blurb: "Carries your laptop and your sense of purpose.",
        description: "Waxed canvas, two brass latches, and a pocket sized exactly for a printed runbook.",
        warnings: &["Contents not included.", "Does not make meetings shorter."],
    },
    Item {
        id: "camera",
        title: "Camera",
        price: Money(9999),
        blurb: "Captures the moment before the incident.",
        description: "24 megapixels, a fast prime lens and a battery that lasts longer than most on-call shifts.",
        warnings: &["Pointing it at the server rack will not fix it."],
    },
    Item {
        id: "football",
        title: "Football",
        price: Money(1999),
        blurb: "Throw it further than your error budget.",
        description: "Composite leather with raised laces, for a tight spiral on the first try.",
        warnings: &["Keep away from the coffee machine."],
    },
];

/// The item with this id.
pub fn item(id: &str) -> Option<&'static Item> {
    CATALOG.iter().find(|item| item.id == id)
}

/// The ids, in the catalog's order, for messages that list what is accepted.
pub fn ids() -> impl Iterator<Item = &'static str> {
    CATALOG.iter().map(|item| item.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_print_like_the_original() {
        assert_eq!(Money(1999).to_string(), "$19.99");
        assert_eq!(Money(5).to_string(), "$0.05");
        assert_eq!(Money(0).to_string(), "$0.00");
        assert_eq!(
            [Money(1999), Money(4999)].into_iter().sum::<Money>(),
            Money(6998)
        );
    }

    #[test]
    fn the_catalog_is_sorted_by_id() {
        let ids: Vec<_> = ids().collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
        assert_eq!(item("camera").map(|i| i.price), Some(Money(9999)));
        assert!(item("piano").is_none());
    }
}
