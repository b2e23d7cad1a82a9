//! A visitor's cart and what the shop says about changes to it.

use std::collections::BTreeSet;

use crate::catalog::{self, Item, Money};

/// The items a visitor picked; each at most once, kept in catalog order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart {
    items: BTreeSet<&'static str>,
}

/// What the shop tells the visitor after a change, in the original's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// An item went in.
    Added,
    /// The item was in the cart already.
    NotAdded,
    /// An item came out.
    Removed,
    /// The item was not in the cart.
    NotRemoved,
    /// The cart was checked out and emptied.
    CheckedOut,
}

impl Message {
    /// The line shown in the cart panel.
    pub fn text(self) -> &'static str {
        match self {
            Message::Added => "Item added successfully!",
            Message::NotAdded => "Item could not be added.",
            Message::Removed => "Item removed successfully!",
            Message::NotRemoved => "Item could not be removed.",
            Message::CheckedOut => "Successfully checked out your items!",
        }
    }
}

impl Cart {
    /// Puts an item in, unless it is there already.
    pub fn add(&mut self, item: &'static Item) -> Message {
        if self.items.insert(item.id) {
            Message::Added
        } else {
            Message::NotAdded
        }
    }

    /// Takes an item out.
    pub fn remove(&mut self, item: &'static Item) -> Message {
        if self.items.remove(item.id) {
            Message::Removed
        } else {
            Message::NotRemoved
        }
    }

    /// Empties the cart (the shop takes no money in this example).
    pub fn checkout(&mut self) -> Message {
        self.items.clear();
        Message::CheckedOut
    }

    /// The items, in catalog order.
    pub fn items(&self) -> impl Iterator<Item = &'static Item> + '_ {
        self.items.iter().filter_map(|id| catalog::item(id))
    }

    /// Whether an item is in the cart.
    pub fn contains(&self, id: &str) -> bool {
        self.items.contains(id)
    }

    /// Whether the cart is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The sum of the prices, exact.
    pub fn total(&self) -> Money {
        self.items().map(|item| item.price).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::item;

    fn get(id: &str) -> &'static Item {
        item(id).unwrap()
    }

    #[test]
    fn an_item_goes_in_once_and_totals_are_exact() {
        let mut cart = Cart::default();
        assert_eq!(cart.add(get("camera")), Message::Added);
        assert_eq!(cart.add(get("camera")), Message::NotAdded);
        assert_eq!(cart.add(get("basketball")), Message::Added);
        assert_eq!(cart.total(), Money(9999 + 1999));
        assert_eq!(cart.total().to_string(), "$119.98");
        let ids: Vec<_> = cart.items().map(|i| i.id).collect();
        assert_eq!(ids, ["basketball", "camera"]);
    }

    #[test]
    fn remove_and_checkout() {
        let mut cart = Cart::default();
        cart.add(get("football"));
        assert_eq!(cart.remove(get("camera")), Message::NotRemoved);
        assert_eq!(cart.remove(get("football")), Message::Removed);
        cart.add(get("briefcase"));
        assert_eq!(cart.checkout(), Message::CheckedOut);
        assert!(cart.is_empty());
        assert_eq!(cart.total(), Money(0));
    }

    mod model {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn totals_stay_exact_for_any_sequence(ops in prop::collection::vec((0u8..3, 0usize..4), 0..64)) {
                let mut cart = Cart::default();
                let mut model = std::collections::BTreeSet::new();
                for (op, index) in ops {
                    let item = &crate::catalog::CATALOG[index];
                    match op {
                        0 => { cart.add(item); model.insert(index); }
                        1 => { cart.remove(item); model.remove(&index); }
                        _ => { cart.checkout(); model.clear(); }
                    }
                    let expected: u64 = model.iter().map(|i| crate::catalog::CATALOG[*i].price.0).sum();
                    prop_assert_eq!(cart.total(), Money(expected));
                }
            }
        }
    }
}
