# -*- test-case-name: tests.test_wbxml -*-
"""
The EAS code pages 0-25 and their tags (MS-ASWBXML 2.1.2.1).

Values were dumped from Debian's libwbxml2 0.11.8 for every tag it knows and
checked against the MS-ASWBXML tables; tags libwbxml2 lacks are marked
C{nolibwbxml}. Names are the specification's; where libwbxml2 prints another
name, C{libwbxml=} gives it (the XML tool accepts both). C{opaque} marks the
byte-array tags that libwbxml2 writes as OPAQUE (base64 in its XML).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, NamedTuple, Tuple


class Tag(NamedTuple):
    page: int
    token: int
    ns: str
    name: str
    libwbxml: str
    opaque: bool
    inLibwbxml: bool


_TABLE = """
page 0 AirSync
05 Sync
06 Responses
07 Add
08 Change
09 Delete
0A Fetch
0B SyncKey
0C ClientId
0D ServerId
0E Status
0F Collection
10 Class
11 Version
12 CollectionId
13 GetChanges
14 MoreAvailable
15 WindowSize
16 Commands
17 Options
18 FilterType
19 Truncation
1A RTFTruncation
1B Conflict
1C Collections
1D ApplicationData
1E DeletesAsMoves
1F NotifyGUID
20 Supported
21 SoftDelete
22 MIMESupport
23 MIMETruncation
24 Wait
25 Limit
26 Partial
27 ConversationMode
28 MaxItems
29 HeartbeatInterval
page 1 Contacts
05 Anniversary
06 AssistantName
07 AssistantPhoneNumber libwbxml=AssistantTelephoneNumber
08 Birthday
09 Body
0A BodySize
0B BodyTruncated
0C Business2PhoneNumber
0D BusinessAddressCity libwbxml=BusinessCity
0E BusinessAddressCountry libwbxml=BusinessCountry
0F BusinessAddressPostalCode libwbxml=BusinessPostalCode
10 BusinessAddressState libwbxml=BusinessState
11 BusinessAddressStreet libwbxml=BusinessStreet
12 BusinessFaxNumber
13 BusinessPhoneNumber
14 CarPhoneNumber
15 Categories
16 Category
17 Children
18 Child
19 CompanyName
1A Department
1B Email1Address
1C Email2Address
1D Email3Address
1E FileAs
1F FirstName
20 Home2PhoneNumber
21 HomeAddressCity libwbxml=HomeCity
22 HomeAddressCountry libwbxml=HomeCountry
23 HomeAddressPostalCode libwbxml=HomePostalCode
24 HomeAddressState libwbxml=HomeState
25 HomeAddressStreet libwbxml=HomeStreet
26 HomeFaxNumber
27 HomePhoneNumber
28 JobTitle
29 LastName
2A MiddleName
2B MobilePhoneNumber
2C OfficeLocation
2D OtherAddressCity libwbxml=OtherCity
2E OtherAddressCountry libwbxml=OtherCountry
2F OtherAddressPostalCode libwbxml=OtherPostalCode
30 OtherAddressState libwbxml=OtherState
31 OtherAddressStreet libwbxml=OtherStreet
32 PagerNumber
33 RadioPhoneNumber
34 Spouse
35 Suffix
36 Title
37 WebPage
38 YomiCompanyName
39 YomiFirstName
3A YomiLastName
3B CompressedRTF
3C Picture
3D Alias
3E WeightedRank
page 2 Email
05 Attachment
06 Attachments
07 AttName
08 AttSize
09 AttOid libwbxml=AttOId
0A AttMethod
0B AttRemoved
0C Body
0D BodySize
0E BodyTruncated
0F DateReceived
10 DisplayName
11 DisplayTo
12 Importance
13 MessageClass
14 Subject
15 Read
16 To
17 Cc
18 From
19 ReplyTo libwbxml=Reply-To
1A AllDayEvent
1B Categories
1C Category
1D DtStamp libwbxml=DTStamp
1E EndTime
1F InstanceType
20 BusyStatus
21 Location
22 MeetingRequest
23 Organizer
24 RecurrenceId
25 Reminder
26 ResponseRequested
27 Recurrences
28 Recurrence
29 Type libwbxml=Recurrence_Type
2A Until libwbxml=Recurrence_Until
2B Occurrences libwbxml=Recurrence_Occurrences
2C Interval libwbxml=Recurrence_Interval
2D DayOfWeek libwbxml=Recurrence_DayOfWeek
2E DayOfMonth libwbxml=Recurrence_DayOfMonth
2F WeekOfMonth libwbxml=Recurrence_WeekOfMonth
30 MonthOfYear libwbxml=Recurrence_MonthOfYear
31 StartTime
32 Sensitivity
33 TimeZone
34 GlobalObjId
35 ThreadTopic
36 MIMEData
37 MIMETruncated
38 MIMESize
39 InternetCPID
3A Flag
3B Status libwbxml=FlagStatus
3C ContentClass
3D FlagType
3E CompleteTime
3F DisallowNewTimeProposal
page 3 AirNotify
05 Notify
06 Notification
07 Version
08 LifeTime
09 DeviceInfo
0A Enable
0B Folder
0C ServerId
0D DeviceAddress
0E ValidCarrierProfiles
0F CarrierProfile
10 Status
11 Responses
12 Devices
13 Device
14 Id
15 Expiry
16 NotifyGUID
17 DeviceFriendlyName
page 4 Calendar
05 Timezone libwbxml=TimeZone
06 AllDayEvent
07 Attendees
08 Attendee
09 Email libwbxml=Attendee_Email
0A Name libwbxml=Attendee_Name
0B Body
0C BodyTruncated
0D BusyStatus
0E Categories
0F Category
10 Compressed_RTF
11 DtStamp libwbxml=DTStamp
12 EndTime
13 Exception
14 Exceptions
15 Deleted libwbxml=Exception_Deleted
16 ExceptionStartTime libwbxml=Exception_StartTime
17 Location
18 MeetingStatus
19 OrganizerEmail libwbxml=Organizer_Email
1A OrganizerName libwbxml=Organizer_Name
1B Recurrence
1C Type libwbxml=Recurrence_Type
1D Until libwbxml=Recurrence_Until
1E Occurrences libwbxml=Recurrence_Occurrences
1F Interval libwbxml=Recurrence_Interval
20 DayOfWeek libwbxml=Recurrence_DayOfWeek
21 DayOfMonth libwbxml=Recurrence_DayOfMonth
22 WeekOfMonth libwbxml=Recurrence_WeekOfMonth
23 MonthOfYear libwbxml=Recurrence_MonthOfYear
24 Reminder
25 Sensitivity
26 Subject
27 StartTime
28 UID
29 AttendeeStatus libwbxml=Attendee_Status
2A AttendeeType libwbxml=Attendee_Type
33 DisallowNewTimeProposal
34 ResponseRequested
35 AppointmentReplyTime
36 ResponseType
37 CalendarType
38 IsLeapMonth
39 FirstDayOfWeek
3A OnlineMeetingConfLink
3B OnlineMeetingExternalLink
3C ClientUid
page 5 Move
05 MoveItems
06 Move
07 SrcMsgId
08 SrcFldId
09 DstFldId
0A Response
0B Status
0C DstMsgId
page 6 GetItemEstimate
05 GetItemEstimate
06 Version
07 Collections
08 Collection
09 Class
0A CollectionId
0B DateTime
0C Estimate
0D Response
0E Status
page 7 FolderHierarchy
05 Folders
06 Folder
07 DisplayName
08 ServerId
09 ParentId
0A Type
0B Response
0C Status
0D ContentClass
0E Changes
0F Add
10 Delete
11 Update
12 SyncKey
13 FolderCreate
14 FolderDelete
15 FolderUpdate
16 FolderSync
17 Count
18 Version
page 8 MeetingResponse
05 CalendarId
06 CollectionId
07 MeetingResponse
08 RequestId
09 Request
0A Result
0B Status
0C UserResponse
0D Version
0E InstanceId
10 ProposedStartTime nolibwbxml
11 ProposedEndTime nolibwbxml
12 SendResponse
page 9 Tasks
05 Body
06 BodySize
07 BodyTruncated
08 Categories
09 Category
0A Complete
0B DateCompleted
0C DueDate
0D UtcDueDate libwbxml=UTCDueDate
0E Importance
0F Recurrence
10 Type libwbxml=Recurrence_Type
11 Start libwbxml=Recurrence_Start
12 Until libwbxml=Recurrence_Until
13 Occurrences libwbxml=Recurrence_Occurrences
14 Interval libwbxml=Recurrence_Interval
15 DayOfMonth libwbxml=Recurrence_DayOfMonth
16 DayOfWeek libwbxml=Recurrence_DayOfWeek
17 WeekOfMonth libwbxml=Recurrence_WeekOfMonth
18 MonthOfYear libwbxml=Recurrence_MonthOfYear
19 Regenerate libwbxml=Recurrence_Regenerate
1A DeadOccur libwbxml=Recurrence_DeadOccur
1B ReminderSet
1C ReminderTime
1D Sensitivity
1E StartDate
1F UtcStartDate libwbxml=UTCStartDate
20 Subject
21 CompressedRTF
22 OrdinalDate
23 SubOrdinalDate
24 CalendarType
25 IsLeapMonth
26 FirstDayOfWeek
page 10 ResolveRecipients
05 ResolveRecipients
06 Response
07 Status
08 Type
09 Recipient
0A DisplayName
0B EmailAddress
0C Certificates
0D Certificate
0E MiniCertificate
0F Options
10 To
11 CertificateRetrieval
12 RecipientCount
13 MaxCertificates
14 MaxAmbiguousRecipients
15 CertificateCount
16 Availability
17 StartTime
18 EndTime
19 MergedFreeBusy
1A Picture
1B MaxSize
1C Data opaque
1D MaxPictures
page 11 ValidateCert
05 ValidateCert
06 Certificates
07 Certificate
08 CertificateChain
09 CheckCRL
0A Status
page 12 Contacts2
05 CustomerId
06 GovernmentId
07 IMAddress
08 IMAddress2
09 IMAddress3
0A ManagerName
0B CompanyMainPhone
0C AccountName
0D NickName
0E MMS
page 13 Ping
05 Ping
06 AutdState
07 Status
08 HeartbeatInterval
09 Folders
0A Folder
0B Id
0C Class
0D MaxFolders
page 14 Provision
05 Provision
06 Policies
07 Policy
08 PolicyType
09 PolicyKey
0A Data
0B Status
0C RemoteWipe
0D EASProvisionDoc
0E DevicePasswordEnabled
0F AlphanumericDevicePasswordRequired
10 RequireStorageCardEncryption libwbxml=DeviceEncryptionEnabled
11 PasswordRecoveryEnabled
12 DocumentBrowseEnabled
13 AttachmentsEnabled
14 MinDevicePasswordLength
15 MaxInactivityTimeDeviceLock
16 MaxDevicePasswordFailedAttempts
17 MaxAttachmentSize
18 AllowSimpleDevicePassword
19 DevicePasswordExpiration
1A DevicePasswordHistory
1B AllowStorageCard
1C AllowCamera
1D RequireDeviceEncryption
1E AllowUnsignedApplications
1F AllowUnsignedInstallationPackages
20 MinDevicePasswordComplexCharacters
21 AllowWiFi
22 AllowTextMessaging
23 AllowPOPIMAPEmail
24 AllowBluetooth
25 AllowIrDA
26 RequireManualSyncWhenRoaming
27 AllowDesktopSync
28 MaxCalendarAgeFilter
29 AllowHTMLEmail
2A MaxEmailAgeFilter
2B MaxEmailBodyTruncationSize
2C MaxEmailHTMLBodyTruncationSize
2D RequireSignedSMIMEMessages
2E RequireEncryptedSMIMEMessages
2F RequireSignedSMIMEAlgorithm
30 RequireEncryptionSMIMEAlgorithm
31 AllowSMIMEEncryptionAlgorithmNegotiation
32 AllowSMIMESoftCerts
33 AllowBrowser
34 AllowConsumerEmail
35 AllowRemoteDesktop
36 AllowInternetSharing
37 UnapprovedInROMApplicationList
38 ApplicationName
39 ApprovedApplicationList
3A Hash
3B AccountOnlyRemoteWipe nolibwbxml
page 15 Search
05 Search
07 Store
08 Name
09 Query
0A Options
0B Range
0C Status
0D Response
0E Result
0F Properties
10 Total
11 EqualTo
12 Value
13 And
14 Or
15 FreeText
17 DeepTraversal
18 LongId
19 RebuildResults
1A LessThan
1B GreaterThan
1C Schema
1D Supported
1E UserName
1F Password
20 ConversationId opaque
21 Picture
22 MaxSize
23 MaxPictures
page 16 Gal
05 DisplayName
06 Phone
07 Office
08 Title
09 Company
0A Alias
0B FirstName
0C LastName
0D HomePhone
0E MobilePhone
0F EmailAddress
10 Picture
11 Status
12 Data opaque
page 17 AirSyncBase
05 BodyPreference
06 Type
07 TruncationSize
08 AllOrNone
0A Body
0B Data
0C EstimatedDataSize
0D Truncated
0E Attachments
0F Attachment
10 DisplayName
11 FileReference
12 Method
13 ContentId
14 ContentLocation
15 IsInline
16 NativeBodyType
17 ContentType
18 Preview
19 BodyPartPreference
1A BodyPart
1B Status
1C Add
1D Delete
1E ClientId
1F Content opaque
20 Location
21 Annotation
22 Street
23 City
24 State
25 Country
26 PostalCode
27 Latitude
28 Longitude
29 Accuracy
2A Altitude
2B AltitudeAccuracy
2C LocationUri
2D InstanceId
page 18 Settings
05 Settings
06 Status
07 Get
08 Set
09 Oof
0A OofState
0B StartTime
0C EndTime
0D OofMessage
0E AppliesToInternal
0F AppliesToExternalKnown
10 AppliesToExternalUnknown
11 Enabled
12 ReplyMessage
13 BodyType
14 DevicePassword
15 Password
16 DeviceInformation
17 Model
18 IMEI
19 FriendlyName
1A OS
1B OSLanguage
1C PhoneNumber
1D UserInformation
1E EmailAddresses
1F SMTPAddress libwbxml=SmtpAddress
20 UserAgent
21 EnableOutboundSMS
22 MobileOperator
23 PrimarySmtpAddress
24 Accounts
25 Account
26 AccountId
27 AccountName
28 UserDisplayName
29 SendDisabled
2B RightsManagementInformation libwbxml=ihsManagementInformation
page 19 DocumentLibrary
05 LinkId
06 DisplayName
07 IsFolder
08 CreationDate
09 LastModifiedDate
0A IsHidden
0B ContentLength
0C ContentType
page 20 ItemOperations
05 ItemOperations
06 Fetch
07 Store
08 Options
09 Range
0A Total
0B Properties
0C Data
0D Status
0E Response
0F Version
10 Schema
11 Part
12 EmptyFolderContents
13 DeleteSubFolders
14 UserName
15 Password
16 Move
17 DstFldId
18 ConversationId opaque
19 MoveAlways
page 21 ComposeMail
05 SendMail
06 SmartForward
07 SmartReply
08 SaveInSentItems
09 ReplaceMime
0B Source
0C FolderId
0D ItemId
0E LongId
0F InstanceId
10 Mime libwbxml=MIME opaque
11 ClientId
12 Status
13 AccountId
15 Forwardees
16 Forwardee
17 Name libwbxml=ForwardeeName
18 Email libwbxml=ForwardeeEmail
page 22 Email2
05 UmCallerID
06 UmUserNotes
07 UmAttDuration
08 UmAttOrder
09 ConversationId opaque
0A ConversationIndex opaque
0B LastVerbExecuted
0C LastVerbExecutionTime
0D ReceivedAsBcc
0E Sender
0F CalendarType
10 IsLeapMonth
11 AccountId
12 FirstDayOfWeek
13 MeetingMessageType
15 IsDraft
16 Bcc
17 Send
page 23 Notes
05 Subject
06 MessageClass
07 LastModifiedDate
08 Categories
09 Category
page 24 RightsManagement
05 RightsManagementSupport
06 RightsManagementTemplates
07 RightsManagementTemplate
08 RightsManagementLicense
09 EditAllowed
0A ReplyAllowed
0B ReplyAllAllowed
0C ForwardAllowed
0D ModifyRecipientsAllowed
0E ExtractAllowed
0F PrintAllowed
10 ExportAllowed
11 ProgrammaticAccessAllowed
12 Owner libwbxml=RMOwner
13 ContentExpiryDate
14 TemplateID
15 TemplateName
16 TemplateDescription
17 ContentOwner
18 RemoveRightsManagementDistribution
page 25 Find
05 Find nolibwbxml
06 SearchId nolibwbxml
07 ExecuteSearch nolibwbxml
08 MailBoxSearchCriterion nolibwbxml
09 Query nolibwbxml
0A Status nolibwbxml
0B FreeText nolibwbxml
0C Options nolibwbxml
0D Range nolibwbxml
0E DeepTraversal nolibwbxml
11 Response nolibwbxml
12 Result nolibwbxml
13 Properties nolibwbxml
14 Preview nolibwbxml
15 HasAttachments nolibwbxml
16 Total nolibwbxml
17 DisplayCc nolibwbxml
18 DisplayBcc nolibwbxml
19 GalSearchCriterion nolibwbxml
20 MaxPictures nolibwbxml
21 MaxSize nolibwbxml
22 Picture nolibwbxml
"""


def _load() -> Tuple[Dict[int, str], Dict[Tuple[int, int], Tag]]:
    namespaces: Dict[int, str] = {}
    tags: Dict[Tuple[int, int], Tag] = {}
    page = -1
    for line in _TABLE.split("\n"):
        words = line.split()
        if not words:
            continue
        if words[0] == "page":
            page = int(words[1])
            namespaces[page] = words[2]
            continue
        token, name, flags = int(words[0], 16), words[1], words[2:]
        libname = name
        for flag in flags:
            if flag.startswith("libwbxml="):
                libname = flag[len("libwbxml="):]
        tags[(page, token)] = Tag(
            page,
            token,
            namespaces[page],
            name,
            libname,
            "opaque" in flags,
            "nolibwbxml" not in flags,
        )
    return namespaces, tags


NAMESPACES, TAGS = _load()
PAGES: Dict[str, int] = {ns: page for page, ns in NAMESPACES.items()}
BY_NAME: Dict[Tuple[str, str], Tag] = {(t.ns, t.name): t for t in TAGS.values()}
BY_LIBWBXML_NAME: Dict[Tuple[str, str], Tag] = {
    (t.ns, t.libwbxml): t for t in TAGS.values()
}
OPAQUE: FrozenSet[Tuple[str, str]] = frozenset(
    (t.ns, t.name) for t in TAGS.values() if t.opaque
)
