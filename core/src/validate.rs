//! Cart validation of a new order.
//!
//! An invalid order is not dead-lettered: it becomes a `FAILED` order with the reason, so
//! the customer-facing status table shows why it was refused. Only an order without an id
//! is rejected outright (see `RejectReason::InvalidOrderId`), because it has no key to be
//! stored under.

use std::fmt;

use super::model::{Item, OrderRequest};
use super::policy::Policy;

/// Why a create request was refused. Lines are numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidOrder {
    /// `customer_id` is empty or blank.
    EmptyCustomerId,
    /// The cart has no lines.
    EmptyCart,
    /// A line has an empty or blank SKU.
    EmptySku {
        /// The line, from 1.
        line: usize,
    },
    /// A line's quantity is zero or negative.
    NonPositiveQuantity {
        /// The line, from 1.
        line: usize,
        /// The quantity given.
        quantity: i32,
    },
    /// A line's unit price is zero or negative.
    NonPositiveUnitPrice {
        /// The line, from 1.
        line: usize,
        /// The price given, in minor units.
        unit_price_minor: i64,
    },
    /// The sum of the lines does not fit in 64 bits.
    AmountOverflow,
    /// `total_minor` is not the sum of quantity × unit price.
    TotalMismatch {
        /// The total the order claims.
        total_minor: i64,
        /// The sum of its lines.
        lines_minor: i64,
    },
    /// The currency is not in `Policy::supported_currencies`.
    UnsupportedCurrency(String),
    /// A required part of the shipping address is empty or blank.
    MissingAddressField(&'static str),
    /// More cart lines, or a longer text, than an order may have: its records would
    /// outgrow what the brokers accept.
    TooLarge {
        /// What is too large, e.g. `cart lines` or `line 3 sku`.
        what: String,
        /// Its size (lines, or characters).
        got: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for InvalidOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidOrder::EmptyCustomerId => write!(f, "invalid order: customer_id is empty"),
            InvalidOrder::EmptyCart => write!(f, "invalid order: the cart is empty"),
            InvalidOrder::EmptySku { line } => write!(f, "invalid order: line {line} has no sku"),
            InvalidOrder::NonPositiveQuantity { line, quantity } => {
                write!(
                    f,
                    "invalid order: line {line} has quantity {quantity}, must be positive"
                )
            }
            InvalidOrder::NonPositiveUnitPrice {
                line,
                unit_price_minor,
            } => write!(
                f,
                "invalid order: line {line} has unit price {unit_price_minor}, must be positive"
            ),
            InvalidOrder::AmountOverflow => {
                write!(f, "invalid order: the sum of the lines overflows")
            }
            InvalidOrder::TotalMismatch {
                total_minor,
                lines_minor,
            } => write!(
                f,
                "invalid order: total {total_minor} differs from the sum of the lines {lines_minor}"
            ),
            InvalidOrder::UnsupportedCurrency(c) => {
                write!(f, "invalid order: currency {c:?} is not supported")
            }
            InvalidOrder::MissingAddressField(field) => {
                write!(f, "invalid order: shipping address has no {field}")
            }
            InvalidOrder::TooLarge { what, got, max } => {
                write!(
                    f,
                    "invalid order: {what} has size {got}, at most {max} allowed"
                )
            }
        }
    }
}

impl std::error::Error for InvalidOrder {}

/// Checks a create request against the cart rules and `policy`. The first problem found is
/// reported, in this order: customer, cart lines, total, currency, address.
///
/// The order id is not checked here; the caller rejects an empty one before.
pub fn validate_order(request: &OrderRequest, policy: &Policy) -> Result<(), InvalidOrder> {
    check_size(request, policy)?;
    if request.customer_id.trim().is_empty() {
        return Err(InvalidOrder::EmptyCustomerId);
    }
    let lines_minor = lines_total(&request.items)?;
    if lines_minor != request.total_minor {
        return Err(InvalidOrder::TotalMismatch {
            total_minor: request.total_minor,
            lines_minor,
        });
    }
    if !policy.supports_currency(&request.currency) {
        return Err(InvalidOrder::UnsupportedCurrency(request.currency.clone()));
    }
    let address = &request.shipping_address;
    // The postal code may be empty: some countries have none.
    for (field, value) in [
        ("recipient", &address.recipient),
        ("street", &address.street),
        ("city", &address.city),
        ("country", &address.country),
    ] {
        if value.trim().is_empty() {
            return Err(InvalidOrder::MissingAddressField(field));
        }
    }
    Ok(())
}

/// The size limits: every record about the order (its status, its commands) carries the
/// cart and the address, so an order's size bounds theirs.
fn check_size(request: &OrderRequest, policy: &Policy) -> Result<(), InvalidOrder> {
    let too_large = |what: String, got: usize, max: usize| {
        if got > max {
            Err(InvalidOrder::TooLarge { what, got, max })
        } else {
            Ok(())
        }
    };
    too_large("cart lines".into(), request.items.len(), policy.max_lines)?;
    let max = policy.max_text_chars;
    too_large(
        "customer_id".into(),
        request.customer_id.chars().count(),
        max,
    )?;
    let a = &request.shipping_address;
    for (field, value) in [
        ("recipient", &a.recipient),
        ("street", &a.street),
        ("city", &a.city),
        ("postal_code", &a.postal_code),
        ("country", &a.country),
    ] {
        too_large(
            format!("shipping address {field}"),
            value.chars().count(),
            max,
        )?;
    }
    for (index, item) in request.items.iter().enumerate() {
        too_large(
            format!("line {} sku", index + 1),
            item.sku.chars().count(),
            max,
        )?;
    }
    Ok(())
}

/// The sum of quantity × unit price, with every line checked. Checked arithmetic: an
/// overflow is an invalid order, never a wrapped total.
fn lines_total(items: &[Item]) -> Result<i64, InvalidOrder> {
    if items.is_empty() {
        return Err(InvalidOrder::EmptyCart);
    }
    let mut sum: i64 = 0;
    for (index, item) in items.iter().enumerate() {
        let line = index + 1;
        if item.sku.trim().is_empty() {
            return Err(InvalidOrder::EmptySku { line });
        }
        if item.quantity <= 0 {
            return Err(InvalidOrder::NonPositiveQuantity {
                line,
                quantity: item.quantity,
            });
        }
        if item.unit_price_minor <= 0 {
            return Err(InvalidOrder::NonPositiveUnitPrice {
                line,
                unit_price_minor: item.unit_price_minor,
            });
        }
        let amount = item
            .unit_price_minor
            .checked_mul(i64::from(item.quantity))
            .ok_or(InvalidOrder::AmountOverflow)?;
        sum = sum
            .checked_add(amount)
            .ok_or(InvalidOrder::AmountOverflow)?;
    }
    Ok(sum)
}
