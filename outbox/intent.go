package outbox

// Message types. A Message whose Type is empty is a UserMessage.
const (
	// UserMessage is a message sent by a user; it needs a Sender.
	UserMessage = "UserMessage"
	// SystemMessage is a message shown as coming from the system; it has no
	// Sender.
	SystemMessage = "SystemMessage"
)

// Intent is one conversation start: the users to synchronise, the
// conversation to create or update, and its first messages. Its JSON form is
// the payload column of outbox.intents, and its field names are those of the
// TalkJS REST API.
type Intent struct {
	// Users are upserted before the conversation. They may be empty when
	// the users are already synchronised.
	Users []User `json:"users,omitempty"`
	// Conversation is created or updated. Its ID is required.
	Conversation Conversation `json:"conversation"`
	// Messages are posted, in order, after the conversation. They may be
	// empty.
	Messages []Message `json:"messages,omitempty"`
}

// User is a TalkJS user.
type User struct {
	// ID is the user's id in TalkJS (required, at most MaxIDLength
	// characters, no control characters, unique within the intent).
	ID string `json:"id"`
	// Name is the user's display name (required).
	Name string `json:"name"`
	// Email holds the user's email addresses (required, at least one).
	Email []string `json:"email"`
	// PhotoURL is the URL of the user's avatar.
	PhotoURL string `json:"photoUrl,omitempty"`
	// WelcomeMessage is shown to users who open a chat with this user.
	WelcomeMessage string `json:"welcomeMessage,omitempty"`
	// Role is the TalkJS role, which selects the user's theme and settings.
	Role string `json:"role,omitempty"`
	// Custom holds application data; TalkJS accepts only string values.
	Custom map[string]string `json:"custom,omitempty"`
}

// Conversation is a TalkJS conversation.
type Conversation struct {
	// ID is the conversation's id in TalkJS (required, at most MaxIDLength
	// characters, no control characters). Intents with the same ID are
	// delivered in the order their transactions committed.
	ID string `json:"id"`
	// Subject is the conversation's title.
	Subject string `json:"subject,omitempty"`
	// Participants are the user ids taking part. When empty, the ids of
	// the intent's Users are used (see Intent.ResolvedParticipants).
	Participants []string `json:"participants,omitempty"`
	// Custom holds application data; TalkJS accepts only string values.
	Custom map[string]string `json:"custom,omitempty"`
}

// Message is a message posted to the conversation.
type Message struct {
	// Type is UserMessage (the default when empty) or SystemMessage.
	Type string `json:"type,omitempty"`
	// Sender is the sending user's id, required for a UserMessage and
	// absent for a SystemMessage. It must be one of the participants when
	// these are given, else one of the intent's users when there are any.
	Sender string `json:"sender,omitempty"`
	// Text is the message (required).
	Text string `json:"text"`
	// Custom holds application data; TalkJS accepts only string values.
	Custom map[string]string `json:"custom,omitempty"`
}

// ResolvedParticipants returns the conversation's participants as delivered:
// Conversation.Participants when given, else the ids of Users, else nil (the
// conversation is sent without participants).
func (in Intent) ResolvedParticipants() []string {
	if len(in.Conversation.Participants) > 0 {
		return in.Conversation.Participants
	}
	if len(in.Users) == 0 {
		return nil
	}
	ids := make([]string, len(in.Users))
	for i, u := range in.Users {
		ids[i] = u.ID
	}
	return ids
}

// ResolvedType returns the message's type as delivered: Type, or
// UserMessage when Type is empty.
func (m Message) ResolvedType() string {
	if m.Type == "" {
		return UserMessage
	}
	return m.Type
}
