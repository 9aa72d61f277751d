//! Typed values attached to a connection: what middleware inserted into the upgrade
//! request, what a channels `connect` callback assigned, what the application set
//! since.

use std::fmt;

/// Values by type, one of each type (Phoenix's assigns, typed): the authenticated
/// user, a tenant, a session.
///
/// A connection has one set, read and written through [`Connection::assign`],
/// [`Connection::assigned`] and [`Connection::with_assigns`]; the channels of a socket
/// read it too, under assigns of their own (see `channels::Socket::assigned`, feature
/// `axum`).
///
/// ```
/// use switchboard::hub::Assigns;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct User(String);
///
/// let mut assigns = Assigns::new().with(User("ann".into()));
/// assert_eq!(assigns.get::<User>(), Some(&User("ann".into())));
/// assert_eq!(assigns.insert(User("bob".into())), Some(User("ann".into())));
/// assert_eq!(assigns.remove::<User>(), Some(User("bob".into())));
/// assert!(assigns.is_empty());
/// ```
///
/// [`Connection::assign`]: super::Connection::assign
/// [`Connection::assigned`]: super::Connection::assigned
/// [`Connection::with_assigns`]: super::Connection::with_assigns
#[derive(Clone, Default)]
pub struct Assigns(http::Extensions);

impl Assigns {
    /// No assigns.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value` (replacing one of the same type).
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.insert(value);
        self
    }

    /// Inserts `value`, returning the previous value of that type.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.0.insert(value)
    }

    /// The value of type `T`.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.0.get()
    }

    /// The value of type `T`, mutably.
    pub fn get_mut<T: Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.0.get_mut()
    }

    /// Removes the value of type `T`.
    pub fn remove<T: Send + Sync + 'static>(&mut self) -> Option<T> {
        self.0.remove()
    }

    /// Whether a value of type `T` is set.
    pub fn contains<T: Send + Sync + 'static>(&self) -> bool {
        self.get::<T>().is_some()
    }

    /// How many values are set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Moves every value of `other` in, replacing those of the same types.
    pub fn extend(&mut self, other: Assigns) {
        self.0.extend(other.0);
    }
}

impl Assigns {
    /// The extensions of a request (what middleware inserted) as assigns.
    pub(crate) fn from_extensions(extensions: http::Extensions) -> Self {
        Self(extensions)
    }
}

impl fmt::Debug for Assigns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assigns")
            .field("len", &self.0.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::Assigns;

    #[test]
    fn one_value_per_type() {
        #[derive(Clone, Debug, PartialEq)]
        struct User(&'static str);
        let mut assigns = Assigns::new().with(User("ann")).with(7u32);
        assert_eq!(assigns.len(), 2);
        assert_eq!(assigns.get::<User>(), Some(&User("ann")));
        assert_eq!(assigns.insert(User("bob")), Some(User("ann")));
        if let Some(n) = assigns.get_mut::<u32>() {
            *n += 1;
        }
        assert_eq!(assigns.remove::<u32>(), Some(8));
        assert!(!assigns.contains::<u32>());
        assigns.extend(Assigns::new().with(User("cy")).with(1u8));
        assert_eq!(assigns.get::<User>(), Some(&User("cy")));
        assert_eq!(assigns.get::<u8>(), Some(&1));
    }
}
